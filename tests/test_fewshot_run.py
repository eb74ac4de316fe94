"""`python -m persam.run data=fss1000 ...` end to end, as the issue's acceptance command: the
episodes are well formed and mIoU / FB-IoU equal a recomputation from the written masks."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from helpers import run_cli

from persam.data.fewshot_synthetic import write_layout


@pytest.fixture(scope="module")
def fss(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss-layout")
    write_layout(root, "fss1000", classes=4, images_per_class=5, seed=3)
    return root


def _recompute(out, root, classes):
    """HSNet's mIoU and FB-IoU from the masks on disk, independently of persam.metrics."""
    sums = {c: np.zeros(4) for c in classes}
    with open(out / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        pred = cv2.imread(str(out / "masks" / "episodes" / f"{row['episode']}.png"), 0) > 127
        gt = cv2.imread(str((root / row["query"]).with_suffix(".png")), 0) >= 128
        sums[row["class"]] += [
            (pred & gt).sum(),
            (pred | gt).sum(),
            (~pred & ~gt).sum(),
            (~pred | ~gt).sum(),
        ]
    miou = np.mean([s[0] / max(s[1], 1) for s in sums.values()])
    t = np.sum(list(sums.values()), axis=0)
    return rows, miou, (t[0] / t[1] + t[2] / t[3]) / 2


@pytest.mark.slow
@pytest.mark.parametrize("shots", [1, 3])
def test_acceptance_command(fss, tmp_path, shots):
    out = tmp_path / "OUT"
    proc = run_cli(
        [
            "data=fss1000",
            f"data.root={fss}",
            f"data.split_file={fss / 'test.txt'}",
            f"data.shots={shots}",
            "data.episodes=12",
            "method=persam",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    classes = (fss / "test.txt").read_text().split()
    assert metrics["complete"] is True and metrics["n_episodes"] == 12
    assert set(metrics["classes"]) == set(classes)
    rows, miou, fbiou = _recompute(out, fss, classes)
    assert [r["episode"] for r in rows] == [f"{i:04d}" for i in range(12)]
    for r in rows:
        supports = r["supports"].split(";")
        assert len(supports) == len(set(supports)) == shots and r["query"] not in supports
        assert all(s.split("/")[0] == r["class"] == r["query"].split("/")[0] for s in supports)
        pred = cv2.imread(str(out / "masks" / "episodes" / f"{r['episode']}.png"), -1)
        assert pred.ndim == 2 and set(np.unique(pred)) <= {0, 255}
        assert pred.shape == cv2.imread(str(fss / r["query"])).shape[:2]
    assert metrics["miou"] == pytest.approx(miou, abs=1e-12)
    assert metrics["fbiou"] == pytest.approx(fbiou, abs=1e-12)
    assert 0.3 < metrics["miou"] < 1.0  # the embedded SAM segments these scenes
    saved = json.loads((out / "episodes.json").read_text())
    assert [e["query"] for e in saved["episodes"]] == [r["query"] for r in rows]
