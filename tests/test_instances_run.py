"""The issue's commands, end to end (`python -m persam.run`, embedded SAM): instance maps and
metrics that a recomputation from the written files reproduces, `data.reference=all` equal to
single-reference runs, PerSAM-F weights reuse, and the bad inputs."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from helpers import run_app, write_object
from PIL import Image

from persam.data.instances import write_instances
from persam.metrics.image import InstanceMeter, connected_instances

pytestmark = pytest.mark.slow


def _paste_copy(image, mask):
    """`image` with its object pasted once more where it hides least of it -> (image, labels)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    bw, bh = xs.max() - xs.min() + 4, ys.max() - ys.min() + 4

    def overlap(d):
        dx, dy = d
        if xs.min() + dx < 0 or xs.max() + dx >= w or ys.min() + dy < 0 or ys.max() + dy >= h:
            return np.inf
        return mask[ys + dy, xs + dx].mean()

    shifts = [
        (sx * bw // k, sy * bh // k) for k in (1, 2) for sx in (-1, 0, 1) for sy in (-1, 0, 1)
    ]
    dx, dy = min([s for s in shifts if s != (0, 0)], key=overlap)
    out, labels = image.copy(), mask.astype(np.uint8)
    out[ys + dy, xs + dx] = image[ys, xs]
    labels[ys + dy, xs + dx] = 2
    return out, labels


@pytest.fixture(scope="module")
def multi(tmp_path_factory, synthetic_heldout):
    """A PerSeg-layout folder of 3 synthetic objects whose test images show the object twice
    (annotations: both copies; `Instances/`: the indexed ground truth)."""
    src = synthetic_heldout  # copied below, never changed
    root = tmp_path_factory.mktemp("multi")
    for name in ("obj00_blob", "obj01_composite", "obj02_polygon"):
        for sub in ("Images", "Annotations"):
            shutil.copytree(src / sub / name, root / sub / name)
        for stem in ("01", "02", "03"):
            ann_path = root / "Annotations" / name / f"{stem}.png"
            image = cv2.imread(str(root / "Images" / name / f"{stem}.jpg"))
            mask = cv2.imread(str(ann_path)).any(-1)
            image, labels = _paste_copy(image, mask)
            cv2.imwrite(str(root / "Images" / name / f"{stem}.jpg"), image)
            ann = np.zeros(image.shape, np.uint8)
            ann[labels > 0] = (0, 0, 128)
            cv2.imwrite(str(ann_path), ann)
            write_instances(root / "Instances" / name / f"{stem}.png", labels)
    return root


def _recompute(out, data, instances_root=None):
    """Instance precision / recall per object from the written maps and the ground truth."""
    results = {}
    for obj_dir in sorted((out / "instances").iterdir()):
        meter = InstanceMeter()
        for path in sorted(obj_dir.glob("*.png")):
            if path.stem == "00":
                continue
            pred = np.array(Image.open(path))
            if instances_root is None:
                ann = cv2.imread(str(data / "Annotations" / obj_dir.name / path.name)).any(-1)
                gt = connected_instances(ann)
            else:
                gt = np.array(Image.open(instances_root / obj_dir.name / path.name))
            meter.update(pred, gt)
        results[obj_dir.name] = meter.result()
    return results


def test_instances_auto_against_one_recomputed_from_the_written_maps(multi, tmp_path):
    found = {}
    for instances, extra in (("1", []), ("auto", [f"data.instances_root={multi / 'Instances'}"])):
        out = tmp_path / instances
        proc = run_app(
            [
                "data=perseg",
                f"data.root={multi}",
                f"method.instances={instances}",
                *extra,
                "logger=none",
                f"hydra.run.dir={out}",
            ],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        recomputed = _recompute(out, multi, multi / "Instances" if extra else None)
        assert set(recomputed) == set(metrics["objects"])
        for name, entry in metrics["objects"].items():
            inst = entry["instances"]
            assert inst["source"] == ("instances_root" if extra else "connected_components")
            for key in ("precision", "recall", "f1", "found", "predicted", "ground_truth"):
                assert inst[key] == pytest.approx(recomputed[name][key], abs=1e-12), (name, key)
            # the union of the instances is the mask scored by iou
            for stem in ("00", "01", "02", "03"):
                labels = np.array(Image.open(out / "instances" / name / f"{stem}.png"))
                mask = cv2.imread(str(out / "masks" / name / f"{stem}.png"), 0)
                np.testing.assert_array_equal(labels > 0, mask > 0)
        found[instances] = sum(e["instances"]["found"] for e in metrics["objects"].values())
        assert metrics["instances"]["source"] == inst["source"]
    # 9 test images with 2 copies each: one instance finds at most 9
    assert found["1"] <= 9 and found["auto"] >= found["1"] + 3, found


def test_reference_all_equals_single_reference_runs(tmp_path):
    data = tmp_path / "data"
    write_object(data, "cat", n=3, seed=1)
    write_object(data, "dog", n=3, seed=2)
    write_object(data, "lonely", n=1, seed=3)
    out = tmp_path / "all"
    proc = run_app(
        [
            "data=perseg",
            f"data.root={data}",
            "data.reference=all",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # `lonely` failed, the rest ran
    metrics = json.loads((out / "metrics.json").read_text())
    lonely = metrics["objects"]["lonely"]
    assert lonely["status"] == "failed" and "object 'lonely'" in lonely["error"]
    for name in ("cat", "dog"):
        entry = metrics["objects"][name]
        assert set(entry["by_reference"]) == {"00", "01", "02"}
        ious = [entry["by_reference"][r]["iou"] for r in ("00", "01", "02")]
        assert entry["iou_mean"] == pytest.approx(np.mean(ious))
        assert entry["iou_std"] == pytest.approx(np.std(ious))  # population std
    assert metrics["miou"] == pytest.approx(
        np.mean([metrics["objects"][n]["iou_mean"] for n in ("cat", "dog")])
    )
    # a run with a failed object is never ranked (issue 23): the report says so ...
    report = run_app([str(out)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 1 and "failed objects: lonely" in report.stderr
    # ... and reports the objects that all ran, by reference
    out = tmp_path / "all_ran"
    proc = run_app(
        [
            "data=perseg",
            f"data.root={data}",
            "data.reference=all",
            "data.objects=[cat,dog]",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_app([str(out)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 0, report.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert "IoU by reference" in md and "| cat |" in md.split("IoU by reference")[1]
    assert (out / "report_references.png").stat().st_size > 1000
    for ref in ("00", "02"):
        single = tmp_path / f"ref{ref}"
        proc = run_app(
            [
                "data=perseg",
                f"data.root={data}",
                f"data.reference={ref}",
                "data.objects=[cat,dog]",
                "logger=none",
                f"hydra.run.dir={single}",
            ],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        one = json.loads((single / "metrics.json").read_text())["objects"]
        for name in ("cat", "dog"):
            by_ref = metrics["objects"][name]["by_reference"][ref]
            for key in ("iou", "biou", "acc"):
                assert by_ref[key] == one[name][key], (name, ref, key)
            a = cv2.imread(str(out / "by_reference" / ref / "masks" / name / "01.png"), 0)
            b = cv2.imread(str(single / "masks" / name / "01.png"), 0)
            np.testing.assert_array_equal(a, b)


def test_persam_f_weights_reuse_gives_the_same_masks(tmp_path):
    data = tmp_path / "data"
    write_object(data, "cat", n=3, seed=1)
    write_object(data, "dog", n=2, seed=2)
    common = [
        "method=persam_f",
        "data=perseg",
        f"data.root={data}",
        "logger=none",
        "method.instances=2",
        "method.scale_weights.fused=eager",
    ]
    fit = tmp_path / "fit"
    proc = run_app([*common, "method.scale_weights.steps=40", f"hydra.run.dir={fit}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((fit / "scale_weights.json").read_text())
    fitted = json.loads((fit / "metrics.json").read_text())["objects"]
    assert set(saved) == {"cat", "dog"} and all(len(w) == 3 for w in saved.values())
    assert saved["cat"] == fitted["cat"]["mask_weights"]
    for load in (fit, fit / "scale_weights.json"):
        out = tmp_path / f"load_{load.name}"
        proc = run_app(
            [*common, f"method.scale_weights.load={load}", f"hydra.run.dir={out}"], cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        objects = json.loads((out / "metrics.json").read_text())["objects"]
        assert "fit_seconds" not in objects["cat"]  # no fit
        assert json.loads((out / "scale_weights.json").read_text()) == saved
        for name, n in (("cat", 3), ("dog", 2)):
            assert objects[name]["iou"] == fitted[name]["iou"]
            for k in range(n):
                for kind in ("masks", "instances"):
                    a = cv2.imread(str(fit / kind / name / f"{k:02d}.png"), cv2.IMREAD_UNCHANGED)
                    b = cv2.imread(str(out / kind / name / f"{k:02d}.png"), cv2.IMREAD_UNCHANGED)
                    np.testing.assert_array_equal(a, b)
    # weights of another object set: that object fails, naming itself and the file
    write_object(data, "eel", n=2, seed=4)
    out = tmp_path / "missing"
    proc = run_app(
        [*common, f"method.scale_weights.load={fit}", f"hydra.run.dir={out}"], cwd=tmp_path
    )
    assert proc.returncode == 1
    objects = json.loads((out / "metrics.json").read_text())["objects"]
    assert objects["cat"]["status"] == "ok"
    assert (
        "object 'eel'" in objects["eel"]["error"]
        and "scale_weights.json" in objects["eel"]["error"]
    )


def test_bad_instances_and_emptying_perturbation(tmp_path):
    data = tmp_path / "data"
    write_object(data, "cat", n=2, seed=1)
    write_object(data, "speck", n=2, seed=2)
    ann = np.zeros((96, 128, 3), np.uint8)
    ann[40:42, 30:60] = (0, 0, 128)  # a 2-pixel line: erosion by 0.3 * sqrt(60) px empties it
    cv2.imwrite(str(data / "Annotations" / "speck" / "00.png"), ann)
    out = tmp_path / "erode"
    proc = run_app(
        [
            "data=perseg",
            f"data.root={data}",
            "data.reference_perturbation=erode",
            "data.perturbation_amount=0.3",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    objects = json.loads((out / "metrics.json").read_text())["objects"]
    assert objects["cat"]["status"] == "ok"
    assert "object 'speck'" in objects["speck"]["error"] and "erode" in objects["speck"]["error"]
    for bad in ("0", "-2"):
        proc = run_app(
            [
                "data=perseg",
                f"data.root={data}",
                f"method.instances={bad}",
                "logger=none",
                f"hydra.run.dir={tmp_path / bad}",
            ],
            cwd=tmp_path,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "method.instances must be a positive integer" in log
        assert "Traceback" not in log
