"""Real multiruns of `python -m persam.run` as subprocesses, with both local launchers, then
`python -m persam.report` over them. Small random-init backbone, small PerSeg-layout data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import SMALL_BACKBONE, run_app, run_cli, write_object

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_object(root, "disc_a", n=3, seed=1)
    write_object(root, "disc_b", n=3, seed=2, size=(120, 90))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _jobs(sweep: Path) -> list[dict]:
    return [
        json.loads((d / "metrics.json").read_text())
        for d in sorted(sweep.iterdir())
        if (d / "metrics.json").is_file()
    ]


def test_joblib_sweep_then_submitit_sweep_share_the_cache(data, cache, tmp_path):
    common = [
        *SMALL_BACKBONE,
        "data=perseg",
        f"data.root={data}",
        "logger=none",  # the loggers: tests/test_loggers.py
        "overlays=false",
        "progress=false",
    ]
    env = {"PERSAM_CACHE_DIR": str(cache)}
    sweep1 = tmp_path / "joblib"
    proc = run_cli(
        [
            "-m",
            *common,
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "ablation=c1_positive,c5_semantic",
            f"hydra.sweep.dir={sweep1}",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = _jobs(sweep1)
    assert len(jobs) == 2 and all(j["n_failed"] == 0 for j in jobs)
    # 6 distinct images; each job also re-reads its reference images from the cache
    assert sum(j["cache"]["misses"] for j in jobs) <= 12
    assert all(j["cache"]["hits"] >= 2 for j in jobs)

    sweep2 = tmp_path / "submitit"
    proc = run_cli(
        [
            "-m",
            *common,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "method.refine_steps=0,1",
            f"hydra.sweep.dir={sweep2}",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = _jobs(sweep2)
    assert len(jobs) == 2
    for job in jobs:  # every embedding came from the cache written by the first sweep
        assert job["cache"]["misses"] == 0 and job["cache"]["hits"] == 8

    # the report's console command is run by test_report_errors_are_clear; here its function
    proc = run_app([str(sweep2)], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 0, proc.stderr
    report = (sweep2 / "report.md").read_text()
    assert "method.refine_steps=0" in report and "method.refine_steps=1" in report
    assert "disc_a" in report and "disc_b" in report
    rows = list(csv.DictReader((sweep2 / "report.csv").open()))
    assert [r["variant"] for r in rows] == ["method.refine_steps=0", "method.refine_steps=1"]
    for row, job in zip(rows, jobs, strict=True):
        assert float(row["miou"]) == pytest.approx(job["miou"])
    assert (sweep2 / "report.png").stat().st_size > 5000
    per_object = list(csv.DictReader((sweep2 / "report_objects.csv").open()))
    assert len(per_object) == 4


def test_report_lists_failed_runs_and_still_reports(data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_app(
        [
            "-m",
            *SMALL_BACKBONE,
            "data=perseg",
            f"data.root={data}",
            "logger=none",
            "overlays=false",
            "progress=false",
            "data.reference=00,05",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a job that died before writing anything
    broken = sweep / "7" / ".hydra"
    broken.mkdir(parents=True)
    (broken / "overrides.yaml").write_text("- data.reference=crash\n")
    proc = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 0, proc.stderr
    report = (sweep / "report.md").read_text()
    assert "| data.reference=00 |" in report
    assert "Runs with problems" in report
    assert "data.reference=05" in report and "failed objects: disc_a, disc_b" in report
    assert "did not finish" in report


def test_report_errors_are_clear(tmp_path):
    # the console command's status once, then the same function in-process
    proc = run_cli([str(tmp_path / "missing")], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 1 and "is not a folder" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_app([str(empty)], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 1 and "No Hydra job folders" in proc.stderr
    (empty / "0" / ".hydra").mkdir(parents=True)
    proc = run_app([str(empty)], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 1 and "No finished runs" in proc.stderr


def test_persam_vs_persam_f_in_one_command(data, tmp_path):
    """`-m method=persam,persam_f`: two runs, PerSAM-F's weights, fit time and loss curves."""
    sweep = tmp_path / "sweep"
    proc = run_app(
        [
            "-m",
            *SMALL_BACKBONE,
            "data=perseg",
            f"data.root={data}",
            "logger=csv",
            "overlays=false",
            "progress=false",
            "method=persam,persam_f",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    persam, persam_f = (json.loads((sweep / n / "metrics.json").read_text()) for n in ("0", "1"))
    assert persam["method"] == "persam" and persam_f["method"] == "persam_f"
    for name, obj in persam_f["objects"].items():
        assert obj["status"] == "ok", obj["error"]
        weights = obj["mask_weights"]
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-6)
        assert weights != pytest.approx([1 / 3] * 3, abs=1e-3), "the weights were learned"
        assert obj["fit_seconds"] > 0 and obj["final_loss"] > 0
        assert "mask_weights" not in persam["objects"][name]
    rows = list(csv.DictReader((sweep / "1" / "csv" / "metrics.csv").open()))
    curve = [float(r["fit/disc_a/loss"]) for r in rows if r.get("fit/disc_a/loss")]
    assert len(curve) >= 10 and curve[-1] < curve[0]
    proc = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert proc.returncode == 0, proc.stderr
    report = (sweep / "report.md").read_text()
    assert "| method=persam |" in report and "| method=persam_f |" in report
    assert "mask_weights" in (sweep / "report_objects.csv").read_text().splitlines()[0]
