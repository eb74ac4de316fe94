"""Every experiment config (conf/experiment/*.yaml) runs end to end as its documented command
does (`python -m persam.run -m experiment=<name>`), with tiny overrides, then `persam.report`
summarises its sweep: the lightning-hydra-template's way of testing experiments."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import pytest
from helpers import run_app
from hydra import compose, initialize_config_dir

from persam.conf import CONFIG_DIR

pytestmark = pytest.mark.slow

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
# One synthetic object with two images, the embedded SAM (small, real weights), no files that do
# not change the metrics. They replace the experiment's data and backbone (and so its sweep over
# backbones: SAM's ViTs are not loadable here), not its methods or ablations.
TINY = [
    "data=synthetic",
    "data.num_objects=1",
    "data.images_per_object=2",
    "backbone=embedded",
    "debug=default",  # no logger, overlays or progress bar (conf/debug/default.yaml)
]
# Few-shot experiments: the synthetic world in the benchmark's layout, two episodes, 2 shots
# (their sweeps over shots and folds are replaced, as TINY replaces backbones).
FEWSHOT_LAYOUT = {"fewshot_coco20i": "coco20i", "fewshot_lvis92i": "lvis92i"}
FEWSHOT_DATA = {
    "fss1000": ["data.classes=2"],
    "coco20i": ["data.classes=4", "data.fold=0"],
    "lvis92i": ["data.classes=10", "data.fold=0"],
}


# Experiments whose methods read DINOv2 (GF-SAM, PerSAM on DINOv2): the golden tiny DINOv2
# (../shared/golden/gfsam/dinov2.pth) stands in for dinov2_vitl14 in paths.checkpoint_dir.
DINOV2 = {"methods_fewshot"}


def _tiny(experiment: str) -> list[str]:
    if experiment == "methods_fewshot":  # its sweep over the few-shot datasets: fss1000's layout
        experiment = "fewshot_fss1000"
    if not experiment.startswith("fewshot_"):
        return TINY
    layout = FEWSHOT_LAYOUT.get(experiment, "fss1000")
    return [
        f"data=synthetic_{layout}",
        *FEWSHOT_DATA[layout],
        "data.images_per_class=3",
        "data.shots=2",
        "data.episodes=2",
        *TINY[3:],
    ]


def _expected_jobs(experiment: str) -> list[dict[str, str]]:
    """The sweep's jobs: the experiment's sweeper params, minus those TINY replaces."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    fixed = {o.split("=")[0] for o in _tiny(experiment)}
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items() if k not in fixed}
    return [
        dict(zip(params, values, strict=True)) for values in itertools.product(*params.values())
    ]


def _tiny_dinov2(tmp_path: Path) -> Path:
    """A checkpoint folder whose dinov2_vitl14 is the golden tiny DINOv2 (skip without it)."""
    from conftest import golden_path

    golden = golden_path("gfsam/dinov2.pth") / "gfsam"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "dinov2_vitl14_pretrain.pth").symlink_to(golden / "dinov2.pth")
    shutil.copy(golden / "dinov2.json", folder / "dinov2_vitl14_pretrain.json")
    return folder


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_end_to_end(experiment, tmp_path):
    sweep = tmp_path / "sweep"
    extra = [f"paths.checkpoint_dir={_tiny_dinov2(tmp_path)}"] if experiment in DINOV2 else []
    proc = run_app(
        ["-m", f"experiment={experiment}", *_tiny(experiment), *extra, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    expected = _expected_jobs(experiment)
    jobs = sorted(
        (p for p in sweep.iterdir() if (p / "metrics.json").is_file()), key=lambda p: int(p.name)
    )
    assert len(jobs) == len(expected) >= 1
    for job, params in zip(jobs, expected, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["complete"] and metrics["n_failed"] == 0, metrics
        assert 0.0 < metrics["miou"] <= 1.0
        for key, value in params.items():
            assert f"{key}={value}" in metrics["overrides"], (key, metrics["overrides"])
        if params.get("method") == "persam_f" or (
            "method" not in params and metrics["method"] == "persam_f"
        ):
            units = metrics.get("objects") or metrics["episodes"]
            assert all("mask_weights" in r for r in units.values())

    report = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 0, report.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert len(rows) == len(expected)
