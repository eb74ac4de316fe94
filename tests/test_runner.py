"""The runner (`persam.tasks.runner`) over the PerSeg task, with the embedded SAM and real files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import write_object
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from persam.conf import CONFIG_DIR
from persam.data.perseg import PerSegDataset
from persam.model.encoder import Encoder
from persam.model.method import PerSAM
from persam.tasks.loggers import RunLogger
from persam.tasks.objects import ObjectTask
from persam.tasks.runner import Runner


@pytest.fixture(scope="module")
def sam():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config")
    return instantiate(cfg.backbone)


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    for i, name in enumerate(("a_disc", "b_disc", "c_disc")):
        write_object(root, name, n=3, seed=i)
    return root


def _run(sam, data, out, resume=False):
    method = PerSAM(sam, Encoder(sam))
    dataset = PerSegDataset(data)
    task = ObjectTask(method=method, dataset=dataset, run_dir=out, overlays=False)
    return Runner(out, RunLogger(None), resume=resume, progress=False).run(task)


def test_metrics_json_lists_expected_units_and_is_complete(sam, data, tmp_path):
    out = tmp_path / "run"
    summary = _run(sam, data, out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["complete"] is True
    assert on_disk["expected"] == ["a_disc", "b_disc", "c_disc"]
    assert list(on_disk["objects"]) == on_disk["expected"]
    ious = [on_disk["objects"][n]["iou"] for n in on_disk["expected"]]
    assert on_disk["miou"] == pytest.approx(float(np.mean(ious)))
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("object,status,iou,biou,acc,n_images,error") and len(rows) == 4


def test_a_failing_object_is_recorded_and_the_run_goes_on(sam, data, tmp_path):
    (data / "Images" / "b_disc" / "01.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    summary = _run(sam, data, out)
    # every unit has its entry (finished), one of them a failure: not complete (issue 23)
    assert summary["complete"] is False and summary["finished"] is True
    assert summary["failed"] == ["b_disc"] and summary["n_failed"] == 1
    entry = summary["objects"]["b_disc"]
    assert entry["status"] == "failed" and "01.jpg" in entry["error"]
    assert entry["iou"] is None and entry["n_images"] == 0
    assert summary["miou"] == pytest.approx(
        np.mean([summary["objects"][n]["iou"] for n in ("a_disc", "c_disc")])
    )


def test_resume_keeps_finished_units_untouched_and_runs_the_rest(sam, data, tmp_path):
    out = tmp_path / "run"
    first = _run(sam, data, out)
    # An interrupted run: c_disc never finished (no entry), its masks half written.
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["objects"]["c_disc"]
    metrics["complete"] = False
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "masks" / "c_disc" / "02.png").unlink()
    kept = out / "masks" / "a_disc" / "01.png"
    cv2.imwrite(str(kept), np.zeros((96, 128), np.uint8))  # a resumed run must not rewrite it
    stamp = kept.stat().st_mtime_ns

    second = _run(sam, data, out, resume=True)
    assert second["complete"] is True
    assert second["objects"]["a_disc"] == first["objects"]["a_disc"]
    assert kept.stat().st_mtime_ns == stamp
    assert (out / "masks" / "c_disc" / "02.png").is_file()
    assert second["objects"]["c_disc"]["iou"] == pytest.approx(first["objects"]["c_disc"]["iou"])
    assert second["miou"] == pytest.approx(first["miou"])


def test_without_resume_every_unit_is_run_again(sam, data, tmp_path):
    out = tmp_path / "run"
    _run(sam, data, out)
    kept = out / "masks" / "a_disc" / "01.png"
    cv2.imwrite(str(kept), np.zeros((96, 128), np.uint8))
    _run(sam, data, out)
    assert cv2.imread(str(kept), cv2.IMREAD_UNCHANGED).any()


def test_every_dataset_config_names_a_runner_task():
    """The task comes from the dataset's config (`data.task`), never from the data module."""
    from hydra.utils import get_class

    from persam.conf import CONFIG_DIR
    from persam.tasks.runner import Task

    for path in sorted((Path(CONFIG_DIR) / "data").glob("*.yaml")):
        target = OmegaConf.load(path).task._target_
        assert issubclass(get_class(target), Task), path
