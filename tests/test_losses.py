"""The one implementation of the mask losses (persam.model.losses) and of atomic file writes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from persam.data.files import atomic_write
from persam.model.losses import dice_loss, focal_loss, mask_iou


def _maps(seed=0, shape=(2, 3, 20, 24)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 4
    target = (torch.rand(shape[0], 1, *shape[2:], generator=g) > 0.6).float()
    return logits, target


def test_losses_by_their_formulas():
    logits, target = _maps()
    t = target.expand_as(logits)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)
    torch.testing.assert_close(dice_loss(logits, target), dice)
    for alpha in (0.25, -1.0):
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t) ** 2
        if alpha >= 0:
            loss = loss * (alpha * t + (1 - alpha) * (1 - t))
        torch.testing.assert_close(focal_loss(logits, target, alpha, 2.0), loss.mean((-2, -1)))
    assert focal_loss(logits, target).shape == dice_loss(logits, target).shape == (2, 3)


def test_persam_f_flat_map_gives_the_official_scalar():
    """PerSAM-F's one mixed map flattened to (1, H*W): a scalar, the official (B, N) loss."""
    logits, target = _maps(1, (1, 1, 30, 40))
    flat, flat_t = logits.reshape(1, -1), target.reshape(1, -1)
    official = sigmoid_focal_loss(flat, flat_t, reduction="none").mean(1).sum()
    assert focal_loss(flat, flat_t).shape == ()
    assert torch.equal(focal_loss(flat, flat_t), official)


def test_weight_restricts_the_losses_to_the_valid_pixels():
    """A padded map (weight 0 on the padding) has the loss of the unpadded map alone."""
    logits, target = _maps(2, (2, 3, 20, 24))
    padded = torch.full((2, 3, 32, 32), 7.0)
    padded[..., :20, :24] = logits
    padded_t = torch.ones(2, 1, 32, 32)
    padded_t[..., :20, :24] = target
    weight = torch.zeros(2, 1, 32, 32)
    weight[..., :20, :24] = 1.0
    torch.testing.assert_close(
        focal_loss(padded, padded_t, weight=weight), focal_loss(logits, target)
    )
    torch.testing.assert_close(dice_loss(padded, padded_t, weight), dice_loss(logits, target))
    full = torch.ones(2, 1, 20, 24)
    torch.testing.assert_close(mask_iou(padded, padded_t, weight), mask_iou(logits, target, full))
    assert not torch.allclose(focal_loss(padded, padded_t), focal_loss(logits, target))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write(path, lambda f: f.write("old"))
    assert path.read_text() == "old"

    def broken(f):
        f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left
    atomic_write(path, lambda f: f.write(b"\x00new"), binary=True)
    assert path.read_bytes() == b"\x00new"
