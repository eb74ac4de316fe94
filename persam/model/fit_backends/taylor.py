"""PerSAM-F's local-expansion backend: the loss and gradient from a few pixel moments per step.

Every pixel's contribution is a function of one number, ``s = z0 + w1 d1 + w2 d2`` (z-space:
``s = x`` on the background, ``s = -x`` on the foreground; see
:mod:`persam.model.fit_backends.fused`). The loss needs, per group (foreground, background), the sums
``P(w) = sum p(s)`` (``p = sigmoid(-s)`` on the foreground, ``sigmoid(s)`` on the background) and
``F(w) = sum u^gamma softplus(s)`` (``u = sigmoid(s)``) and their gradients. Around a centre ``c``
(``w = c + delta``), with ``t = delta . d``::

    phi(s_c + t) = sum_n phi_n(s_c) t^n                      (phi_n = phi^(n) / n!)
    sum_i phi(s_i) = sum_{a+b<=K} delta1^a delta2^b M_ab,    M_ab = C(a+b, a) sum_i phi_{a+b} d1^a d2^b

so one pass over the pixels at ``c`` (Taylor coefficients of ``p`` and ``f`` by jet arithmetic,
then the moments ``M_ab`` by one matrix product, in float64) gives a degree-K polynomial in
``delta``; each optimizer step then costs O(K^2) flops instead of a pass over the pixels. The
expansion is redone at the current weights whenever they leave the trust box
``|w - c|_inf <= radius``, with ``radius`` chosen so that the truncation error of the loss and
of each gradient component is provably <= ``tol`` (1e-9; float32 rounding of the loss is 6e-8).

Truncation bound (why the radius is safe). ``sigmoid`` and ``u^gamma softplus`` (gamma >= 0)
are analytic in the strip ``|Im s| < pi`` (sigmoid's poles are at ``+-i pi``). Take the disc of
radius ``R = DISC = 3 pi / 4`` around a real ``s``: there ``|1 + e^-z| >= sin R`` (the least
modulus of ``1 + r e^(i theta)`` over ``r > 0`` is ``|sin theta|`` for ``|theta| > pi/2``), so
``|u|, |v| <= 1 / sin R`` and ``|u^gamma| = |u|^gamma``; ``1 + e^z`` has modulus in
``[sin R, 1 + e^(s + R)]`` and argument in ``(-pi, pi)``, so ``|softplus(z)| <=
max(softplus(s + R), -ln sin R) + pi``. Cauchy's estimate gives ``|phi_n(s)| <= C R^-n`` with
``C_p = 1 / sin R`` and ``C_f = (1 / sin R)^gamma (max(softplus(s + R), -ln sin R) + pi)``.
With ``|t| <= radius D`` (``D = |d1| + |d2|``) and ``q = radius D / R < 1``, a pixel's value
error is <= ``C q^(K+1) / (1 - q)`` and its gradient error (component k) <= ``C |d_k| q^K
(K + 1 - K q) / (R (1 - q)^2)``. Pixels are binned by ``D`` (upper bin edges stand for ``D``),
so summing these over the pixels costs a few numbers per bin; the sums are propagated through
dice and focal (:func:`loss_grad_error`, using ``sum(p) >= 0`` and ``|dP/dw_k| <= sum |d_k| /
4``) to bound the loss and gradient errors, and the radius is the largest that keeps both <=
``tol``. ``tests/test_scale_weights_taylor.py`` checks the bound against the direct float64
sums (at low orders, where the error is visible). Saturated pixels (``|s|`` large) are not
skipped but cost nothing per step either: they sit in the moments like every other pixel.

When the logits' spread ``Dmax`` is so large that the radius would be below ``MIN_RADIUS``
(about two Adam steps), the expansion is not worth it and every step uses the direct fused pass
instead (``fallback_factory`` builds it). Nor is it when the weights walk out of the trust box
quickly: an expansion costs as much as several hundred compiled direct steps, so when the
weights leave the box of an expansion that served fewer steps than that (``min_steps``), or
after ``MAX_EXPANSIONS`` expansions, the rest of the fit uses the direct pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from persam.model.fit_backends.fused import combine, validate_inputs

log = logging.getLogger(__name__)

#: Degree of the local polynomial.
ORDER = 8
#: Bound on the truncation error of the loss and of each gradient component.
TOL = 1e-9
#: Below this trust radius the direct pass is used instead (the radius would last ~2 steps).
MIN_RADIUS = 2e-3
#: Passes over the pixels after which the rest of the fit uses the direct pass: a fit whose
#: weights keep leaving the trust radius (small radius, a long walk) costs less that way. On the
#: golden PerSeg objects one expansion serves all 1000 steps; on the embedded SAM's synthetic
#: objects the walk needed 120-190 (36 s against 4 s for the direct pass).
MAX_EXPANSIONS = 4
#: Steps an expansion must serve for the next one to pay, by how the direct pass runs: an
#: expansion costs ~26 ms on an 82k-pixel frame, a Taylor step ~30 us, a direct step ~75 us
#: compiled and ~650 us eager (1 thread), so it pays after ~570 / ~42 steps. A walk that leaves
#: a trust box sooner is finished on the direct pass.
MIN_STEPS = {"compile": 500, "eager": 40}
#: Pixels per chunk of the expansion pass (its float64 temporaries stay in cache, and each op
#: stays below torch's intra-op parallel grain, 32768).
CHUNK = 16384


def _monomials(order: int) -> list[tuple[int, int]]:
    return [(a, k - a) for k in range(order + 1) for a in range(k, -1, -1)]


def taylor_coefficients(s: Tensor, gamma: float, order: int) -> tuple[Tensor, Tensor, Tensor]:
    """Taylor coefficients in ``t`` of ``u(s + t)``, ``v(s + t)`` and ``f(s + t)``.

    ``s`` (n,) float64 -> three (order + 1, n): ``u = sigmoid``, ``v = 1 - u`` (order 0 without
    cancellation), ``f = u^gamma softplus``. Jet arithmetic: ``u' = u v``, ``softplus' = u``,
    ``(log u)' = v``, ``u^gamma = exp(gamma log u)``, ``f = u^gamma * softplus``.
    """
    e = torch.exp(-s.abs())
    r = 1 / (1 + e)
    nonneg = s >= 0
    u0 = torch.where(nonneg, r, e * r)
    v0 = torch.where(nonneg, e * r, r)
    l1p = torch.log1p(e)
    sp = [torch.clamp_min(s, 0) + l1p]  # softplus(s)
    lu = [-(torch.clamp_min(-s, 0) + l1p)]  # log u = -softplus(-s)
    u, v = [u0], [v0]
    for k in range(1, order + 1):
        uv = sum(u[j] * v[k - 1 - j] for j in range(k))  # (u v)_{k-1}
        u.append(uv / k)
        v.append(-u[k])
        sp.append(u[k - 1] / k)
        lu.append(v[k - 1] / k)
    ug = [torch.exp(gamma * lu[0])]
    for k in range(1, order + 1):
        ug.append(sum((j * gamma) * lu[j] * ug[k - j] for j in range(1, k + 1)) / k)
    f = [sum(ug[j] * sp[k - j] for j in range(k + 1)) for k in range(order + 1)]
    return torch.stack(u), torch.stack(v), torch.stack(f)


def loss_grad_error(
    e_p: tuple[float, float],
    eg_p: tuple[float, float],
    e_f: tuple[float, float],
    eg_f: tuple[float, float],
    g_p: tuple[float, float],
    n_pos: float,
    n_neg: float,
    alpha: float,
) -> tuple[float, float]:
    """Worst-case error of the loss and of each gradient component, given per-group (fg, bg)
    bounds on the errors of ``P`` (``e_p``), ``dP/dw_k`` (``eg_p``), ``F`` (``e_f``), ``dF/dw_k``
    (``eg_f``) and ``g_p`` >= ``|dP/dw_k|``. Uses only ``P >= 0`` (so ``den >= n_pos + 1``) and
    ``num / den <= 2``."""
    a_pos, a_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    d0 = n_pos + 1
    big = e_p[0] + e_p[1]  # error of den
    if big >= d0:
        return math.inf, math.inf
    n_all = n_pos + n_neg
    er = (2 * e_p[0] + 2 * big) / (d0 - big)  # |error of num / den|
    loss_err = er + (a_pos * e_f[0] + a_neg * e_f[1]) / n_all
    # dice gradient = -2 dP_fg / den + (num / den) (d den / den)
    term1 = 2 * (eg_p[0] / (d0 - big) + g_p[0] * big / (d0 * (d0 - big)))
    gsum = g_p[0] + g_p[1]
    q = gsum / d0
    eq = (eg_p[0] + eg_p[1]) / (d0 - big) + gsum * big / (d0 * (d0 - big))
    term2 = er * q + (2 + er) * eq
    grad_err = term1 + term2 + (a_pos * eg_f[0] + a_neg * eg_f[1]) / n_all
    return loss_err, grad_err


#: Bins of the per-pixel spread ``D = |d1| + |d2|`` for the error bound: upper edges
#: ``Dmax 2^(-j / 4)``, j = 0 .. NBINS - 1 (the last bin also holds everything smaller).
NBINS = 64
#: Radius of the Cauchy disc (< pi, the distance from the real axis to sigmoid's poles).
DISC = 0.75 * math.pi


class _Group:
    """The pixels of one group in z-space: rows ``(z0, d1, d2)`` float64 (3, n), binned by
    their spread ``|d1| + |d2|`` (``bins`` (n,) int64, ``edges`` (NBINS,) upper edges)."""

    def __init__(self, z: Tensor, foreground: bool) -> None:
        self.z = z.contiguous()
        self.foreground = foreground
        self.n = z.shape[1]
        ad = z[1:].abs()
        spread = ad[0] + ad[1]
        self.d_max = float(spread.max()) if self.n else 0.0
        scale = self.d_max if self.d_max > 0 else 1.0
        self.edges = scale * 2.0 ** (-np.arange(NBINS) / 4)
        x = torch.floor(-4 * torch.log2(spread / scale)).nan_to_num(NBINS, NBINS, NBINS)
        self.bins = x.clamp(0, NBINS - 1).long()
        self.count = torch.bincount(self.bins, minlength=NBINS).double().numpy()
        self.abs_d = np.stack(
            [torch.bincount(self.bins, ad[k], minlength=NBINS).numpy() for k in (0, 1)]
        )  # (2, NBINS): sum |d_k| per bin


class TaylorBackend:
    """Loss and gradient of the PerSAM-F fit at ``w`` (2, 1) from local polynomial models.

    ``logits`` (3, H, W), ``gt`` (H, W) bool. Call it with the weights: ``loss, grad =
    backend(w)`` (loss 0-d and grad shaped like ``w``, in ``w``'s dtype). ``expansions`` counts
    the passes over the pixels so far; ``radius`` is the current trust radius.
    """

    def __init__(
        self,
        logits,
        gt,
        alpha: float = 0.25,
        gamma: float = 2.0,
        order: int = ORDER,
        tol: float = TOL,
        fallback_factory: Callable[[], Callable] | None = None,
        max_expansions: int | None = None,
        min_steps: int = 0,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0 for the Taylor backend; got {gamma}")
        flat, mask = validate_inputs(logits, gt)
        x = flat.double()
        rows = torch.stack([x[0], x[1] - x[0], x[2] - x[0]])  # x = r0 + w1 r1 + w2 r2
        self.fg = _Group(-rows[:, mask], foreground=True)
        self.bg = _Group(rows[:, ~mask], foreground=False)
        self.n_pos, self.n_neg = float(self.fg.n), float(self.bg.n)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.order, self.tol = int(order), float(tol)
        self.fallback_factory = fallback_factory
        self.fallback: Callable | None = None
        self.max_expansions = MAX_EXPANSIONS if max_expansions is None else int(max_expansions)
        # An expansion that served fewer steps than this is the last (0: only the cap counts).
        self.min_steps = int(min_steps)
        self.served = 0  # steps evaluated on the current expansion
        # Seconds spent compiling the direct pass when the fit switched to it mid-way.
        self.late_compile_seconds = 0.0
        self.switched = False  # True once the fit moved to the direct pass after Taylor steps
        self.mono = _monomials(self.order)
        a = np.array([m[0] for m in self.mono])
        b = np.array([m[1] for m in self.mono])
        self._a, self._b = a, b
        self._binom = np.array([math.comb(int(i + j), int(i)) for i, j in self.mono], float)
        self.center: np.ndarray | None = None
        self.radius = 0.0
        self.coef: np.ndarray | None = None  # (4, n_mono): P_fg, P_bg, F_fg, F_bg
        self.expansions = 0
        self.expand_seconds = 0.0
        self.direct = False
        self.workers = max(1, min(2, torch.get_num_threads()))

    # ---------------------------------------------------------------- the expansion pass
    def _moments_part(self, group: _Group, c: np.ndarray, starts: list[int]) -> list:
        """Partial sums over the chunks beginning at ``starts``: the moment blocks (one (2,
        k + 1) tensor per degree k) and the f bound constants per bin."""
        k1 = self.order + 1
        acc = [torch.zeros(2, k + 1, dtype=torch.float64) for k in range(k1)]
        c_sum = torch.zeros(NBINS, dtype=torch.float64)
        c_d = torch.zeros(2, NBINS, dtype=torch.float64)
        c_u = 1 / math.sin(DISC)
        for i in starts:
            z0, d1, d2 = group.z[:, i : i + CHUNK]
            s = z0 + c[0] * d1 + c[1] * d2
            u, v, f = taylor_coefficients(s, self.gamma, self.order)
            if group.foreground:  # p = v: v_0, then v_k = -u_k
                p = torch.cat([v[:1], -u[1:]])
            else:
                p = u
            pf = torch.stack([p, f], 1)  # (k1, 2, n)
            mono = torch.ones(z0.shape[0], 1, dtype=torch.float64)
            for k in range(k1):  # mono: d1^a d2^(k-a), a = k .. 0
                if k:
                    mono = torch.cat([mono * d1[:, None], mono[:, -1:] * d2[:, None]], 1)
                acc[k] += pf[k] @ mono
            # Bound of |f| on the disc of radius DISC around s (module docstring).
            sp_max = torch.nn.functional.softplus(s + DISC, threshold=1e9)
            cf = c_u**self.gamma * (sp_max.clamp_min(-math.log(math.sin(DISC))) + math.pi)
            bins = group.bins[i : i + CHUNK]
            c_sum += torch.bincount(bins, cf, minlength=NBINS)
            c_d[0] += torch.bincount(bins, cf * d1.abs(), minlength=NBINS)
            c_d[1] += torch.bincount(bins, cf * d2.abs(), minlength=NBINS)
        return [*acc, c_sum, c_d]

    def _moments(self, group: _Group, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(2, n_mono) moments of p and f, and the f bound constants per bin: sum C (NBINS,),
        sum C |d_k| (2, NBINS).

        The chunks are shared between ``workers`` Python threads, each running single-threaded
        torch ops (a chunk is below torch's parallel grain), and the partial sums are added in a
        fixed order: deterministic, and free of OpenMP spin-waiting on a busy machine."""
        starts = list(range(0, group.n, CHUNK))
        parts = [starts[j :: self.workers] for j in range(self.workers)]
        if self.workers > 1 and len(starts) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                results = list(pool.map(lambda part: self._moments_part(group, c, part), parts))
        else:
            results = [self._moments_part(group, c, starts)]
        total = [sum(r[j] for r in results) for j in range(len(results[0]))]
        *acc, c_sum, c_d = total
        moments = torch.cat(acc, 1).numpy() * self._binom
        return moments, c_sum.numpy(), c_d.numpy()

    def error_bound(self, radius: float, c_f: tuple) -> tuple[float, float]:
        """Loss and gradient truncation-error bounds for trust radius ``radius``.

        ``c_f``: per group, the per-bin sums of the ``|f|`` bound ``C`` and of ``C |d_k|``."""
        k = self.order
        c_p = 1 / math.sin(DISC)  # |p| on the disc
        e_p, eg_p, e_f, eg_f, g_p = [], [], [], [], []
        for group, (c_sum, c_d) in zip((self.fg, self.bg), c_f, strict=True):
            q = radius * group.edges / DISC
            used = group.count > 0
            if used.any() and q[used].max() >= 1:
                return math.inf, math.inf
            q = np.where(used, q, 0.0)
            val = q ** (k + 1) / (1 - q)  # sum_{n > K} q^n
            der = q**k * (k + 1 - k * q) / (1 - q) ** 2 / DISC  # sum_{n > K} n q^(n-1) / DISC
            e_p.append(c_p * float(group.count @ val))
            eg_p.append(c_p * float((group.abs_d @ der).max()))
            e_f.append(float(c_sum @ val))
            eg_f.append(float((c_d @ der).max()))
            g_p.append(float(group.abs_d.sum(1).max()) / 4)
        return loss_grad_error(
            tuple(e_p),
            tuple(eg_p),
            tuple(e_f),
            tuple(eg_f),
            tuple(g_p),
            self.n_pos,
            self.n_neg,
            self.alpha,
        )

    def _choose_radius(self, c_f: tuple) -> float:
        d_max = max(self.fg.d_max, self.bg.d_max)
        if d_max == 0:
            return math.inf  # the loss does not depend on w
        hi = 0.999 * DISC / d_max
        if max(self.error_bound(hi, c_f)) <= self.tol:
            return hi
        lo = 0.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if max(self.error_bound(mid, c_f)) <= self.tol:
                lo = mid
            else:
                hi = mid
        return lo

    def expand(self, c: np.ndarray) -> None:
        """Recompute the polynomial models around ``c`` (2,) (one pass over the pixels)."""
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # parallel over chunks instead (see _moments)
        try:
            m_fg, cs_fg, cd_fg = self._moments(self.fg, c)
            m_bg, cs_bg, cd_bg = self._moments(self.bg, c)
        finally:
            torch.set_num_threads(threads)
        self.coef = np.stack([m_fg[0], m_bg[0], m_fg[1], m_bg[1]])
        self.center = c.copy()
        self.bound_constants = ((cs_fg, cd_fg), (cs_bg, cd_bg))
        self.radius = self._choose_radius(self.bound_constants)
        self.expansions += 1
        self.served = 0
        self.expand_seconds += time.perf_counter() - t0

    # ---------------------------------------------------------------- per step
    def sums(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model values (4,) ``[P_fg, P_bg, F_fg, F_bg]`` and gradients (4, 2) at ``w`` (2,)."""
        if self.center is None or np.abs(w - self.center).max() > self.radius:
            self.expand(w)
        d1, d2 = w - self.center
        a, b = self._a, self._b
        mono = d1**a * d2**b
        dm1 = a * d1 ** np.maximum(a - 1, 0) * d2**b
        dm2 = b * d1**a * d2 ** np.maximum(b - 1, 0)
        coef = self.coef
        return coef @ mono, np.stack([coef @ dm1, coef @ dm2], 1)

    def _start(self, w: np.ndarray) -> None:
        """First expansion; falls back to the direct pass if the trust radius is too small."""
        self.expand(w)
        if self.radius < MIN_RADIUS and self.fallback_factory is not None:
            log.info(
                "Taylor trust radius %.2g < %.2g (logit differences up to %.3g): using the "
                "direct fused pass for this fit",
                self.radius,
                MIN_RADIUS,
                max(self.fg.d_max, self.bg.d_max),
            )
            self.fallback = self.fallback_factory()
            self.direct = True

    def warm_up(self, w: Tensor) -> float:
        """Expand at the initial weights ``w``; returns the seconds spent compiling (only when
        the direct fallback is needed and compiled)."""
        if self.center is None:
            self._start(w.detach().double().cpu().reshape(-1).numpy())
        return self.fallback.warm_up(w) if self.direct else 0.0

    def __call__(self, w: Tensor) -> tuple[Tensor, Tensor]:
        if self.center is None:
            self._start(w.detach().double().cpu().reshape(-1).numpy())
        if self.direct:
            return self.fallback(w)
        wd = w.detach().double().cpu().reshape(-1).numpy()
        if (
            self.fallback_factory is not None
            and np.abs(wd - self.center).max() > self.radius
            and (self.expansions >= self.max_expansions or self.served < self.min_steps)
        ):
            log.info(
                "Taylor model expanded %d times (trust radius %.2g, the last served %d steps): "
                "using the direct fused pass for the rest of this fit",
                self.expansions,
                self.radius,
                self.served,
            )
            self.fallback = self.fallback_factory()
            self.late_compile_seconds = self.fallback.warm_up(w)
            self.direct = self.switched = True
            return self.fallback(w)
        val, grad = self.sums(wd)
        self.served += 1
        loss, g = combine(
            val[0], val[1], grad[0], grad[1], val[2], val[3], grad[2], grad[3],
            self.n_pos, self.n_neg, self.alpha,
        )  # fmt: skip
        loss_t = torch.tensor(loss, dtype=w.dtype, device=w.device)
        return loss_t, torch.as_tensor(g, dtype=w.dtype).to(w.device).reshape(w.shape)
