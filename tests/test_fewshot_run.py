"""`python -m persam.run data=fss1000 ...` end to end, as the issue's acceptance command: the
episodes are well formed and mIoU / FB-IoU equal a recomputation from the written masks."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from helpers import run_app

from persam.data.fewshot_synthetic import write_layout


@pytest.fixture(scope="module")
def fss(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss-layout")
    write_layout(root, "fss1000", classes=4, images_per_class=5, seed=3)
    return root


def _recompute(out, root, classes):
    """HSNet's mIoU and FB-IoU from the masks on disk, independently of persam.metrics.image."""
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
    proc = run_app(
        [
            "data=fss1000",
            "data.protocol=persam",  # the project's draw: distinct supports, the images' size
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


@pytest.mark.slow
def test_persam_f_on_coco_layout_and_bad_input(tmp_path):
    root = tmp_path / "coco"
    write_layout(root, "coco20i", classes=8, images_per_class=4, seed=1)
    # the layout's instances JSON: the project's draw (official reads HSNet's pickled lists)
    base = [
        "data=coco20i",
        "data.protocol=persam",
        f"data.root={root}",
        "logger=none",
        "overlays=false",
    ]
    out = tmp_path / "F"
    proc = run_app(
        [
            *base,
            "data.fold=1",
            "data.shots=2",
            "data.episodes=6",
            "method=persam_f",
            "method.scale_weights.steps=40",
            "method.scale_weights.fused=eager",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fold"] == 1 and metrics["shots"] == 2 and metrics["method"] == "persam_f"
    assert len(metrics["classes"]) == 2  # 8 categories, 4 folds
    for entry in metrics["episodes"].values():
        assert entry["status"] == "ok" and len(entry["mask_weights"]) == 3
    # bad input: a clear message naming the field or the file, and no traceback
    for extra, message in (
        (["data.shots=0"], "data.shots=0"),
        (["data.fold=4"], "data.fold=4 is out of range"),
        (["data.annotations=nope.json"], "Annotation file not found"),
    ):
        bad = run_app([*base, *extra, f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr[-2000:]
        assert message in bad.stdout + bad.stderr
        assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_an_unreadable_support_fails_its_episodes_only(fss, tmp_path):
    import shutil

    root = tmp_path / "fss"
    shutil.copytree(fss, root)
    cls = (root / "test.txt").read_text().split()[0]
    (root / cls / "1.png").write_bytes(b"broken")
    out = tmp_path / "OUT"
    args = [
        "data=fss1000",
        "data.protocol=persam",
        f"data.root={root}",
        "data.episodes=10",
        f"data.split_file={root / 'test.txt'}",
        "logger=none",
        "overlays=false",
    ]
    proc = run_app([*args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 1
    metrics = json.loads((out / "metrics.json").read_text())
    failed = {n: e for n, e in metrics["episodes"].items() if e["status"] == "failed"}
    assert failed and metrics["n_failed"] == len(failed) < 10
    for e in failed.values():
        assert f"{cls}/1.jpg" in [e["query"], *e["supports"].split(";")]
        assert "Cannot read mask" in e["error"] and f"{cls}/1.png" in e["error"]
    assert metrics["n_episodes"] == 10 - len(failed)
    # resuming with another seed is refused by the recorded configuration (the field named)
    again = run_app([*args, "data.seed=5", "resume=true", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert again.returncode != 0 and "data.seed" in again.stdout + again.stderr
    # the same configuration over changed data draws other episodes: the saved list refuses it
    (root / cls / "1.png").unlink()
    (root / cls / "1.jpg").unlink()
    again = run_app([*args, "resume=true", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert again.returncode != 0 and "different episode list" in again.stdout + again.stderr


@pytest.mark.slow
def test_report_tables_per_fold(tmp_path):
    root = tmp_path / "coco"
    write_layout(root, "coco20i", classes=8, images_per_class=3, seed=2)
    sweep = tmp_path / "sweep"
    proc = run_app(
        [
            "-m",
            "data=coco20i",
            "data.protocol=persam",
            f"data.root={root}",
            "data.fold=0,3",
            "data.shots=1,2",
            "data.episodes=4",
            "logger=none",
            "overlays=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 0, report.stderr[-3000:]
    md = (sweep / "report.md").read_text()
    assert "## Few-shot: mIoU / FB-IoU per fold" in md and "| fold 0 | fold 3 | mean |" in md
    with open(sweep / "report_fewshot.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["variant"], r["fold"]) for r in rows) == [
        ("data.shots=1", "0"),
        ("data.shots=1", "3"),
        ("data.shots=2", "0"),
        ("data.shots=2", "3"),
    ]
    by = {(r["variant"], r["fold"]): float(r["miou"]) for r in rows}
    for job in sweep.iterdir():
        if (job / "metrics.json").is_file():
            m = json.loads((job / "metrics.json").read_text())
            assert by[(f"data.shots={m['shots']}", str(m["fold"]))] == pytest.approx(m["miou"])
    mean = (by[("data.shots=2", "0")] + by[("data.shots=2", "3")]) / 2
    line = next(ln for ln in md.splitlines() if ln.startswith("| data.shots=2 |"))
    assert line.split("|")[-2].strip().startswith(f"{100 * mean:.2f} / ")
