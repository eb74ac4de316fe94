"""Real W&B offline runs (the console command: W&B starts a service process) and Lightning CSV
logs (in-process, `run_app`) written by `python -m persam.run`."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import SMALL_BACKBONE, run_app, run_cli, write_object

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_object(root, "disc_a", n=2, seed=1)
    write_object(root, "disc_b", n=2, seed=2)
    return root


def test_wandb_offline_run(data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        [
            *SMALL_BACKBONE,
            "data=perseg",
            f"data.root={data}",
            "logger=wandb",
            f"hydra.run.dir={out}",
            "progress=false",
        ],
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list((runs[0] / "files" / "media" / "table").glob("*.json"))
    table = json.loads(tables[0].read_text())
    assert table["columns"][:6] == ["object", "status", "iou", "biou", "acc", "n_images"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {row[0]: row[2] for row in table["data"]} == {
        name: r["iou"] for name, r in metrics["objects"].items()
    }
    assert len(list((runs[0] / "files" / "media" / "images").glob("*.jpg"))) == 4
    blob = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"miou" in blob and b"mbiou" in blob


def test_csv_logger(data, tmp_path):
    out = tmp_path / "run"
    proc = run_app(
        [
            *SMALL_BACKBONE,
            "data=perseg",
            f"data.root={data}",
            "logger=csv",
            f"hydra.run.dir={out}",
            "progress=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    keys = set(rows[0])
    assert {"disc_a/iou", "disc_b/biou", "miou", "macc"} <= keys
    metrics = json.loads((out / "metrics.json").read_text())
    logged = [float(r["miou"]) for r in rows if r.get("miou")]
    assert logged == [pytest.approx(metrics["miou"])]
    assert (out / "csv" / "hparams.yaml").is_file()
