"""`python -m persam.train`: retraining from the entry point lowers the loss, deterministically;
prompt sampling, the batched decoder and the memory guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import SMALL_ARCH as ARCH
from helpers import run_app

from persam.backbones.sam import build_architecture
from persam.model.decoder import decode_images as decode
from persam.training.memory import (
    TrainingMemoryError,
    check_memory,
    is_out_of_memory,
    out_of_memory_error,
)
from persam.training.prompts import (
    PointSet,
    boxes_from,
    correction_points,
    initial_points,
    jittered_box,
)

# A small architecture (8 x 8 grid) and a tiny world: a few tenths of a second per step on 2 CPU
# cores.
QUICK = [
    "backbone.encoder_embed_dim=32",
    "backbone.encoder_depth=1",
    "backbone.encoder_num_heads=2",
    "backbone.encoder_global_attn_indexes=[0]",
    "backbone.window_size=4",
    "backbone.image_size=128",
    "backbone.vit_patch_size=16",
    "backbone.prompt_embed_dim=32",
    "backbone.decoder_mlp_dim=64",
    "backbone.decoder_num_heads=2",
    "backbone.iou_head_hidden_dim=32",
    "train.batch_size=2",
    "train.data.num_identities=3",
    "train.data.scenes_per_identity=2",
    "train.data.workers=1",
    "train.module.warmup_steps=5",
    "train.module.lr=3e-3",
    "train.module.loss_size=64",
    "trainer.max_steps=40",
    "progress=false",
]


def _train(tmp_path, name: str, extra=()):
    out = tmp_path / name
    proc = run_app([*QUICK, *extra, f"hydra.run.dir={out}"], cwd=tmp_path, module="persam.train")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_retraining_lowers_the_loss_and_is_deterministic(tmp_path):
    first = _train(tmp_path, "a")
    history = json.loads((first / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, 41))
    losses = np.array([r["loss"] for r in history])
    assert np.isfinite(losses).all()
    # the first and last 10 steps: measured 17.1 -> 8.6 (50 %); require a clear drop
    assert losses[-10:].mean() < 0.75 * losses[:10].mean(), losses
    # the CSV logger got every step too
    csv = (first / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in csv[0] and len(csv) == 41

    # the record and a checkpoint that loads back through the backbone builder
    rec = json.loads((first / "embedded_sam.json").read_text())
    assert (
        rec["seed"] == 0
        and rec["steps"] == 40
        and rec["command"].startswith("python -m persam.train")
    )
    assert rec["final_losses"]["loss"] < rec["first_losses"]["loss"]
    assert (first / "embedded_sam.md").read_text().startswith("# embedded_sam.pth")
    state = torch.load(first / "embedded_sam.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())

    second = _train(tmp_path, "b")
    again = json.loads((second / "history.json").read_text())
    assert [r["loss"] for r in again] == [r["loss"] for r in history]
    state2 = torch.load(second / "embedded_sam.pth", weights_only=True)
    assert all(torch.equal(state[k], state2[k]) for k in state)

    # continuing from the trained weights starts where the first run ended, not from scratch
    weights = first / "embedded_sam.pth"
    third = _train(tmp_path, "c", [f"train.init_from={weights}", "trainer.max_steps=5"])
    cont = np.array([r["loss"] for r in json.loads((third / "history.json").read_text())])
    assert cont.mean() < 0.75 * losses[:5].mean(), (cont, losses[:5])
    rec3 = json.loads((third / "embedded_sam.json").read_text())
    assert rec3["init_from"] == str(weights.resolve()) and rec3["steps"] == 5
    assert str(weights.resolve()) in (third / "embedded_sam.md").read_text()
    # the record lists the whole chain of stages (each started from the previous one's weights)
    rec1 = json.loads((first / "embedded_sam.json").read_text())
    assert [c["sha256"] for c in rec3["chain"]] == [rec1["sha256"], rec3["sha256"]]
    assert [c["steps"] for c in rec3["chain"]] == [rec1["steps"], 5]
    assert "Training chain (2 stage(s)" in (third / "embedded_sam.md").read_text()


@pytest.mark.slow
def test_a_batch_too_large_for_memory_stops_with_advice(tmp_path):
    proc = run_app(
        [*QUICK, "train.batch_size=1000000", f"hydra.run.dir={tmp_path / 'big'}"],
        cwd=tmp_path,
        module="persam.train",
    )
    assert proc.returncode == 2
    assert "Lower train.batch_size (now 1000000)" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_a_corrupt_init_checkpoint_stops_with_advice(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    proc = run_app(
        [*QUICK, f"train.init_from={bad}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        module="persam.train",
    )
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert f"Cannot read SAM checkpoint {bad}" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "embedded_sam.pth").exists()


def test_memory_guard_and_out_of_memory_message():
    with pytest.raises(TrainingMemoryError, match="backbone.image_size"):
        check_memory(ARCH | {"image_size": 4096}, 10_000, 3, 10, 10**6)
    assert check_memory(ARCH, 2, 3, 10, 10**5) > 0
    oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    )
    assert is_out_of_memory(oom) and not is_out_of_memory(RuntimeError("shape mismatch"))
    msg = str(out_of_memory_error(oom, 8, ARCH))
    assert "train.batch_size (now 8)" in msg and "backbone.image_size (now 128)" in msg


def test_batched_decode_matches_segment_anything():
    torch.manual_seed(0)
    sam = build_architecture(**ARCH).eval()
    feats = torch.randn(3, 32, 8, 8)
    coords = torch.rand(3, 2, 2) * 127
    labels = torch.tensor([[1, 0], [1, -1], [0, 1]])
    masks_in = torch.randn(3, 1, 32, 32)
    boxes = torch.tensor([[10.0, 12, 90, 100], [0, 0, 127, 127], [40, 30, 60, 70]])
    with torch.no_grad():
        for box in (None, boxes):
            masks, iou = decode(sam, feats, (coords, labels), box, masks_in)
            assert masks.shape == (3, 4, 32, 32) and iou.shape == (3, 4)
            for i in range(3):
                sparse, dense = sam.prompt_encoder(
                    points=(coords[i : i + 1], labels[i : i + 1]),
                    boxes=None if box is None else box[i : i + 1],
                    masks=masks_in[i : i + 1],
                )
                ref_masks, ref_iou = sam.mask_decoder.predict_masks(
                    feats[i : i + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense
                )
                torch.testing.assert_close(masks[i : i + 1], ref_masks, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(iou[i : i + 1], ref_iou, rtol=1e-5, atol=1e-5)


def test_prompt_sampling():
    rng = np.random.default_rng(0)
    gt = np.zeros((2, 64, 64), bool)
    gt[0, 10:30, 20:40] = True
    gt[1, 40:60, 5:25] = True
    valid = np.array([[64, 48], [64, 64]])
    points = initial_points(gt, valid, rng, negative=True)
    coords, labels = points.tensors()
    assert coords.shape == (2, 2, 2) and labels.tolist() == [[1, 0], [1, 0]]
    for i in range(2):
        (px, py), (nx, ny) = coords[i].long().tolist()
        assert gt[i, py, px] and not gt[i, ny, nx]
        assert nx < valid[i][1] and ny < valid[i][0]  # negatives stay in the unpadded image
    # correction points: on the error region, labelled by its kind; none when perfect
    pred = gt.copy()
    pred[0] = False  # all false negatives
    more = correction_points(points, gt, pred, valid, rng)
    c, lab = more.tensors()
    assert c.shape == (2, 3, 2) and lab[0, 2] == 1 and lab[1, 2] == -1
    x, y = c[0, 2].long().tolist()
    assert gt[0, y, x]
    # boxes: jittered around the mask and inside the image; from predictions, scaled
    for _ in range(50):
        box = jittered_box(gt[0], (64, 48), rng)
        assert 0 <= box[0] < box[2] <= 47 and 0 <= box[1] < box[3] <= 63
    b = boxes_from(gt[:, ::2, ::2], gt, valid, rng, scale=2.0)
    assert b[0].tolist() == [20.0, 10.0, 39.0, 29.0]
    empty = PointSet(2)
    assert len(empty) == 0 and empty.tensors() is None


def test_touching_group_takes_the_objects_in_contact():
    from persam.training.data import touching_group

    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 20:30] = 1  # touches the target's right side
    labels[30:38, 30:38] = 2  # far away
    labels[0:1, 0:1] = 3  # touches nothing, and too small anyway
    group = touching_group(mask, labels, min_area=0.01)
    assert group.dtype == np.float32
    np.testing.assert_array_equal(group > 0, mask | (labels == 1))
    assert not touching_group(mask, np.zeros_like(labels), 0.01)[~mask].any()


def test_nested_multimask_targets():
    from persam.training.module import EmbeddedSamModule

    with pytest.raises(ValueError, match="train.module.multimask"):
        EmbeddedSamModule(ARCH, multimask="largest")
    module = EmbeddedSamModule(ARCH, multimask="nested")
    gt = torch.zeros(2, 1, 32, 32)
    gt[:, :, 8:24, 8:24] = 1
    parts = torch.zeros(2, 32, 32, dtype=torch.long)
    parts[:, 8:16, 8:24] = 1
    parts[:, 16:24, 8:24] = 2
    group = gt.clone()
    group[:, :, 8:24, 24:30] = 1
    points = PointSet(2)
    points.add(0, (10.0, 20.0), 1)  # in part 2
    points.add(1, (10.0, 9.0), 1)  # in part 1
    scales = module._scales(gt, parts, group, points, "point")
    assert scales.shape == (2, 3, 32, 32)
    assert torch.equal(scales[0, 0].bool(), parts[0] == 2)
    assert torch.equal(scales[1, 0].bool(), parts[1] == 1)
    assert torch.equal(scales[:, 1:2], gt) and torch.equal(scales[:, 2:3], group)
    # a box names the object: every scale is the object
    boxed = module._scales(gt, parts, group, points, "box")
    assert torch.equal(boxed, gt.expand(-1, 3, -1, -1))
    # no parts, no group: the object at every scale
    assert torch.equal(module._scales(gt, None, None, points, "point"), gt.expand(-1, 3, -1, -1))


def test_batches_carry_visible_distractors_without_changing_the_pairs():
    from persam.training.data import DataConfig, PairBatches, render_pool

    pool = render_pool(
        DataConfig(num_identities=3, scenes_per_identity=2, workers=1), 128, progress=False
    )
    plain = PairBatches(pool, 2, 128, seed=0).batch(5)
    rich = PairBatches(pool, 2, 128, seed=0, extra_objects=3).batch(5)
    for key in ("image", "mask", "valid", "identity"):
        assert torch.equal(plain[key], rich[key])
    assert plain["others"].shape == (4, 0, 128, 128)
    others, ok = rich["others"], rich["others_ok"]
    assert others.shape == (4, 3, 128, 128) and ok.any()
    area = others.sum((-2, -1))
    assert torch.equal(area > 0, ok)  # a slot is used exactly when it holds a mask
    assert (area[ok] >= 0.004 * 128 * 96).all()  # at least min_other_area of the image
    assert not (others * rich["mask"]).any()  # never the target's pixels
    # nested scales: the target's parts lie inside it, its group contains it
    assert rich["parts"].shape == (4, 128, 128) and rich["group"].shape == (4, 1, 128, 128)
    assert not ((rich["parts"] > 0) & (rich["mask"][:, 0] == 0)).any()
    assert (rich["group"] >= rich["mask"]).all()
    for j, (h, w) in enumerate(rich["valid"].tolist()):
        assert not others[j, :, h:, :].any() and not others[j, :, :, w:].any()


def test_schedule_steps_sets_the_cosine_length_apart_from_max_steps():
    import lightning as L

    from persam.training.module import EmbeddedSamModule

    def lrs(max_steps: int, schedule_steps=None) -> list[float]:
        module = EmbeddedSamModule(ARCH, warmup_steps=2, schedule_steps=schedule_steps)
        module.trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False)
        conf = module.configure_optimizers()
        opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(max_steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    full = lrs(20)
    stopped = lrs(12, schedule_steps=20)  # a run of 20 steps cut after 12
    assert stopped == full[:12]
    assert lrs(12) != full[:12]  # without it, the schedule would end at step 12
