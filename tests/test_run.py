"""`python -m persam.run`: its console function in-process (`run_app`); the exit statuses of a
missing checkpoint and an unknown experiment from the real console command (`run_cli`)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import GOLDEN_OBJECTS, iou
from helpers import SMALL_BACKBONE, run_app, run_cli, write_object


@pytest.mark.golden
@pytest.mark.slow
def test_faithfulness_command(golden, tmp_path):
    """The issue's command, verbatim: final masks match the official ones."""
    out = tmp_path / "OUT"
    proc = run_app(
        [
            "method=persam",
            "backbone=tiny",
            f"backbone.checkpoint={golden / 'tiny_sam.pth'}",
            "data=perseg",
            f"data.root={golden / 'perseg-mini'}",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["objects"]) == set(GOLDEN_OBJECTS)
    for key in ("miou", "mbiou", "macc"):
        assert 0.0 <= metrics[key] <= 1.0
    for obj in GOLDEN_OBJECTS:
        entry = metrics["objects"][obj]
        assert entry["status"] == "ok" and entry["error"] is None and entry["n_images"] == 2
        for nn in ("00", "01", "02"):
            ours = cv2.imread(str(out / "masks" / obj / f"{nn}.png"), cv2.IMREAD_UNCHANGED)
            assert ours.ndim == 2 and set(np.unique(ours)) <= {0, 255}
            ref = cv2.imread(str(golden / "reference" / "persam" / obj / f"{nn}.png")).any(-1)
            assert iou(ours > 0, ref) >= 0.99, (obj, nn)
            assert (out / "overlays" / obj / f"{nn}.jpg").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("object,status,iou,biou,acc,n_images") and len(rows) == 4


@pytest.mark.slow
def test_bad_input_is_reported_per_object(tmp_path):
    data = tmp_path / "data"
    for name in ("good", "no_ref_mask", "size_mismatch", "empty_ref", "corrupt"):
        write_object(data, name, n=2)
    (data / "Annotations" / "no_ref_mask" / "00.png").unlink()
    cv2.imwrite(
        str(data / "Annotations" / "size_mismatch" / "00.png"), np.zeros((50, 50, 3), np.uint8)
    )
    cv2.imwrite(
        str(data / "Annotations" / "empty_ref" / "00.png"), np.zeros((96, 128, 3), np.uint8)
    )
    (data / "Images" / "corrupt" / "01.jpg").write_bytes(b"not a jpeg")
    (data / "Images" / ".DS_Store").write_bytes(b"\0")
    (data / "Images" / "good" / ".DS_Store").write_bytes(b"\0")
    (data / "Images" / "good" / "Thumbs.db").write_bytes(b"\0")
    out = tmp_path / "out"
    proc = run_app(
        [
            *SMALL_BACKBONE,
            "data=perseg",
            f"data.root={data}",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "RANDOM weights" in proc.stdout + proc.stderr
    objects = json.loads((out / "metrics.json").read_text())["objects"]
    assert objects["good"]["status"] == "ok"
    assert any("Thumbs.db" in w for w in objects["good"]["warnings"])
    assert (out / "masks" / "good" / "01.png").is_file()
    errors = {k: v["error"] for k, v in objects.items() if v["status"] == "failed"}
    assert set(errors) == {"no_ref_mask", "size_mismatch", "empty_ref", "corrupt"}
    assert "Annotations/no_ref_mask/00.png" in errors["no_ref_mask"]
    assert "size_mismatch/00.png" in errors["size_mismatch"] and "Resize" in errors["size_mismatch"]
    assert "empty" in errors["empty_ref"]
    assert "corrupt/01.jpg" in errors["corrupt"]
    # the corrupt object's reference mask was written before its second image failed
    assert (out / "masks" / "corrupt" / "00.png").is_file()


@pytest.mark.slow
def test_missing_checkpoint_exits_with_advice(tmp_path):
    proc = run_cli(
        [
            "backbone=vit_h",
            f"backbone.checkpoint={tmp_path}/sam_vit_h_4b8939.pth",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'o'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    log = proc.stdout + proc.stderr
    assert "sam_vit_h_4b8939.pth" in log and "backbone.checkpoint=" in log


@pytest.mark.slow
def test_unknown_component_override(tmp_path):
    proc = run_app(
        ["method.semantic_prompting=false", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path
    )
    assert proc.returncode == 1 and "semantic_prompting" in proc.stderr
    proc = run_app(
        [
            *SMALL_BACKBONE,
            "+method.semantic_prompting=false",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'b'}",
        ],
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "semantic_prompting" in log and "semantic_prompt," in log


@pytest.mark.slow
def test_unknown_experiment(tmp_path):
    proc = run_cli(
        ["-m", "experiment=no_such_study", f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "no_such_study" in proc.stderr and "ablation_components" in proc.stderr
