"""The Taylor backend of the PerSAM-F fit: jets, the truncation bound, and its fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from persam.model.fit_backends.fused import combine, fused_loss_and_grad, prepare_fused_inputs
from persam.model.fit_backends.taylor import MIN_STEPS, TOL, TaylorBackend, taylor_coefficients
from persam.model.scale_weights import fit_scale_weights, make_loss, reference_loss


def _problem(seed, h, w, frac, scale, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    gt = torch.rand(h, w, generator=g) < frac
    gt.view(-1)[0] = True
    return logits, gt


def _direct(logits, gt, w, alpha=0.25, gamma=2.0):
    loss, grad = fused_loss_and_grad(
        prepare_fused_inputs(logits, gt), torch.as_tensor(w).reshape(2, 1), alpha, gamma, "eager"
    )
    return loss.item(), grad.flatten().numpy()


def _model(backend, w):
    val, grad = backend.sums(np.asarray(w, dtype=np.float64))
    return combine(
        val[0], val[1], grad[0], grad[1], val[2], val[3], grad[2], grad[3],
        backend.n_pos, backend.n_neg, backend.alpha,
    )  # fmt: skip


@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_taylor_coefficients_are_the_derivatives(gamma):
    s0 = torch.tensor([-40.0, -5.0, -0.3, 0.0, 0.7, 6.0, 40.0], dtype=torch.float64)
    u, v, f = taylor_coefficients(s0, gamma, 4)
    s = s0.clone().requires_grad_(True)
    funcs = {
        "u": torch.sigmoid(s),
        "v": torch.sigmoid(-s),
        "f": torch.sigmoid(s) ** gamma * torch.nn.functional.softplus(s, threshold=1e9),
    }
    for name, coef in (("u", u), ("v", v), ("f", f)):
        y = funcs[name]
        for n in range(5):
            torch.testing.assert_close(
                coef[n] * math.factorial(n), y.detach(), rtol=1e-9, atol=1e-13
            )
            if n < 4:
                (y,) = torch.autograd.grad(y.sum(), s, create_graph=True)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_truncation_bound_holds_and_is_not_vacuous(order, scale):
    # Low orders so that the truncation error is visible: at the corners of the trust box the
    # actual error is at most the tolerance the radius was chosen for, and within 1e5 of it.
    logits, gt = _problem(1, 60, 70, 0.3, scale)
    tol = 1e-6
    backend = TaylorBackend(logits, gt, order=order, tol=tol)
    c = np.array([0.3, 0.2])
    backend.expand(c)
    loss_b, grad_b = backend.error_bound(backend.radius, backend.bound_constants)
    assert max(loss_b, grad_b) <= tol
    worst = 0.0
    for corner in [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, 1)]:
        w = c + 0.999999 * backend.radius * np.array(corner)
        loss, grad = _model(backend, w)
        ref_loss, ref_grad = _direct(logits, gt, w)
        worst = max(worst, abs(loss - ref_loss), float(np.abs(grad - ref_grad).max()))
    assert backend.expansions == 1
    assert worst <= tol
    assert worst >= tol * 1e-5


CASES = [
    (0, 37, 41, 0.4, 0.5),
    (1, 64, 64, 0.05, 0.2),
    (2, 50, 90, 0.9, 1.0),
    (4, 1, 5, 0.5, 0.3),
]


@pytest.mark.parametrize("case", CASES)
def test_taylor_matches_autograd_far_from_the_centre(case):
    logits, gt = _problem(*case)
    backend = TaylorBackend(logits, gt)
    rng = np.random.default_rng(case[0])
    for w in [np.array([1 / 3, 1 / 3]), *rng.uniform(-1, 1, size=(4, 2))]:
        loss, grad = backend(torch.as_tensor(w).reshape(2, 1))
        wt = torch.as_tensor(w).reshape(2, 1).requires_grad_(True)
        ref = reference_loss(wt, logits, gt)
        ref.backward()
        assert abs(loss.item() - ref.item()) < TOL + 1e-12
        assert (grad - wt.grad).abs().max().item() < TOL + 1e-12
    assert backend.expansions >= 2  # the weights left the first trust box


def test_taylor_falls_back_to_the_direct_pass_for_huge_logit_spreads():
    logits, gt = _problem(3, 33, 47, 0.5, 300.0)
    loss_fn = make_loss(logits, gt, backend="taylor", fused="eager")
    w = torch.full((2, 1), 0.2, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(w)
    loss.backward()
    assert loss_fn.backend.direct
    ref_w = w.detach().clone().requires_grad_(True)
    ref = reference_loss(ref_w, logits, gt)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-9, atol=1e-12)


def test_taylor_fit_with_several_expansions_matches_the_official_loop(monkeypatch):
    import persam.model.fit_backends.taylor as taylor

    monkeypatch.setattr(taylor, "MAX_EXPANSIONS", 10**6)  # the Taylor model all the way
    for mode in MIN_STEPS:
        monkeypatch.setitem(MIN_STEPS, mode, 0)  # however few steps an expansion serves
    logits, gt = _problem(5, 40, 40, 0.3, 1.5, dtype=torch.float32)
    steps, lr = 80, 3e-2
    res = fit_scale_weights(logits, gt, steps=steps, lr=lr)
    assert res.backend == "taylor" and res.expansions >= 2
    w = torch.nn.Parameter(torch.ones(2, 1) / 3)
    opt = torch.optim.AdamW([w], lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = reference_loss(w, logits, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    ref_w = torch.cat((1 - w.sum(0).unsqueeze(0), w)).detach().flatten().numpy()
    assert np.abs(res.weights - ref_w).max() < 1e-6
    assert np.abs(res.losses - np.array(losses)).max() < 1e-6


def test_a_long_walk_switches_to_the_direct_pass_and_keeps_the_official_loss():
    """After `max_expansions` passes the rest of the fit runs on the direct pass, same values."""
    logits, gt = _problem(7, 40, 40, 0.3, 1.5)
    loss_fn = make_loss(logits, gt, backend="taylor", fused="eager")
    backend = loss_fn.backend
    backend.max_expansions = 2
    backend.min_steps = 0  # the cap alone: each value below is a 1-step stay in a trust box
    for k, value in enumerate((0.2, 0.6, 1.0, 1.4)):  # each far outside the last trust box
        w = torch.full((2, 1), value, dtype=torch.float64, requires_grad=True)
        loss = loss_fn(w)
        loss.backward()
        assert backend.direct == (k >= 2), k
        assert backend.expansions == min(k + 1, 2)
        ref_w = w.detach().clone().requires_grad_(True)
        ref = reference_loss(ref_w, logits, gt)
        ref.backward()
        assert abs(loss.item() - ref.item()) < TOL + 1e-12
        torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("served", [3, 5])
def test_a_trust_box_left_too_soon_ends_the_taylor_steps(served):
    """Leaving the box of an expansion that served fewer than `min_steps` steps switches to the
    direct pass (another expansion would not pay); one that served enough re-expands."""
    logits, gt = _problem(7, 40, 40, 0.3, 1.5)
    loss_fn = make_loss(logits, gt, backend="taylor", fused="eager")
    backend = loss_fn.backend
    assert backend.min_steps == MIN_STEPS["eager"] > 0
    backend.min_steps = 5
    near = torch.full((2, 1), 0.2, dtype=torch.float64)
    for _ in range(served):  # steps inside the first trust box
        loss_fn(near)
    assert backend.served == served and backend.expansions == 1 and not backend.direct
    far = torch.full((2, 1), 0.6, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(far)
    loss.backward()
    switched = served < 5
    assert backend.direct == backend.switched == switched
    assert backend.expansions == (1 if switched else 2)
    ref_w = far.detach().clone().requires_grad_(True)
    ref = reference_loss(ref_w, logits, gt)
    ref.backward()
    assert abs(loss.item() - ref.item()) < TOL + 1e-12
    torch.testing.assert_close(far.grad, ref_w.grad, rtol=1e-9, atol=1e-11)
