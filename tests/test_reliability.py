"""Nothing silently wrong: `python -m persam.run` on broken copies of PerSeg-layout data, reused
folders, a missing GPU, an unwritable cache (its console function in-process, `run_app`), and real
kills (SIGINT, SIGKILL) of real processes followed by `persam.report` and `resume=true`. Small
random-init backbone, small data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cli_process, run_app, write_object
from PIL import Image

pytestmark = pytest.mark.slow

# debug=tiny: the small random-init SAM, no logger, overlays or progress bar (conf/debug/)
COMMON = ["debug=tiny", "data=perseg"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(("obj_a", "obj_b", "obj_c", "obj_d")):
        write_object(root, name, n=3, seed=10 + i)
    return root


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# -- bad files ---------------------------------------------------------------------------------
def test_mask_formats_give_the_results_of_the_8bit_masks(data, tmp_path):
    """16-bit, palette (object index 2) and upper-case .PNG masks score as their 8-bit copies."""
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    for path in sorted((broken / "Annotations").rglob("*.png")):
        fg = cv2.imread(str(path)).any(-1)
        obj = path.parent.name
        if obj == "obj_a":  # 16-bit grayscale 0/255 (the official 8-bit decode sees nothing)
            cv2.imwrite(str(path), fg.astype(np.uint16) * 255)
        elif obj == "obj_b":  # palette, object index 2 = (0, 128, 0)
            im = Image.fromarray(fg.astype(np.uint8) * 2, mode="P")
            im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
            im.save(path)
        elif obj == "obj_c":  # same masks, upper-case extension
            path.rename(path.with_suffix(".PNG"))
    runs = {}
    for name, root in (("original", data), ("broken", broken)):
        out = tmp_path / name
        proc = run_app([*COMMON, f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = _metrics(out)
    for obj in ("obj_a", "obj_b", "obj_c", "obj_d"):
        a, b = runs["original"]["objects"][obj], runs["broken"]["objects"][obj]
        assert b["status"] == "ok" and b["n_images"] == a["n_images"] == 2
        assert b["iou"] == a["iou"], obj
        for stem in ("00", "01", "02"):  # the same masks were predicted
            assert (tmp_path / "broken" / "masks" / obj / f"{stem}.png").read_bytes() == (
                tmp_path / "original" / "masks" / obj / f"{stem}.png"
            ).read_bytes()
    warned = runs["broken"]["objects"]
    for obj in ("obj_a", "obj_b"):  # the official red-channel reading differs: said, per file
        assert any(
            f"Annotations/{obj}/00.png" in w and "official" in w for w in warned[obj]["warnings"]
        )
    assert not any("official" in w for w in warned["obj_c"]["warnings"])


def test_exif_rotated_images_are_refused_with_the_file_and_the_switch(data, tmp_path):
    root = tmp_path / "exif"
    shutil.copytree(data, root, ignore=shutil.ignore_patterns("obj_b", "obj_c", "obj_d"))
    image = root / "Images" / "obj_a" / "01.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(image) as im:
        im.save(image, quality=95, exif=exif.tobytes())
    out = tmp_path / "out"
    proc = run_app([*COMMON, f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 1
    error = _metrics(out)["objects"]["obj_a"]["error"]
    assert str(image) in error and "data.exif=apply" in error and "data.exif=ignore" in error
    proc = run_app(
        [*COMMON, f"data.root={root}", "data.exif=ignore", f"hydra.run.dir={tmp_path / 'ign'}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_objects_without_scorable_images_and_a_too_small_reference(data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(data, root, ignore=shutil.ignore_patterns("obj_d"))
    for stem in ("01", "02"):  # obj_a: only its reference is annotated
        (root / "Annotations" / "obj_a" / f"{stem}.png").unlink()
    for stem in ("01", "02"):  # obj_b: only its reference image
        (root / "Images" / "obj_b" / f"{stem}.jpg").unlink()
    tiny = np.zeros((96, 128, 3), np.uint8)  # obj_c: a one-pixel reference mask
    tiny[11, 13] = (0, 0, 128)
    cv2.imwrite(str(root / "Annotations" / "obj_c" / "00.png"), tiny)
    out = tmp_path / "out"
    proc = run_app([*COMMON, f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # obj_c failed
    assert "ObjectMeter" not in proc.stdout + proc.stderr
    objects = _metrics(out)["objects"]
    error = objects["obj_c"]["error"]
    assert str(root / "Annotations" / "obj_c" / "00.png") in error and "too small" in error
    assert "data.reference=" in error
    for name in ("obj_a", "obj_b"):
        entry = objects[name]
        assert entry["status"] == "ok" and entry["n_images"] == 0 and entry["iou"] is None
        assert any("no scorable test image" in w for w in entry["warnings"]), entry
    # the missing annotations are kept in the warnings, with the file named
    assert sum("Annotations/obj_a/01.png" in w for w in objects["obj_a"]["warnings"]) == 1
    assert (out / "masks" / "obj_a" / "02.png").is_file()
    # obj_c failed: the run finished but is not complete (issue 23)
    assert _metrics(out)["miou"] is None and _metrics(out)["complete"] is False
    assert _metrics(out)["finished"] is True


# -- run folders -------------------------------------------------------------------------------
def test_reused_folder_is_refused_before_anything_is_written(data, tmp_path):
    out = tmp_path / "out"
    args = [*COMMON, f"data.root={data}", "data.objects=[obj_a]", f"hydra.run.dir={out}"]
    assert run_app(args, cwd=tmp_path).returncode == 0
    before = tree(out)
    proc = run_app([*args[:-2], "data.objects=[obj_b]", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 2
    log = proc.stdout + proc.stderr
    assert str(out) in log and "resume=true" in log and "hydra.run.dir=" in log
    after = tree(out)
    for path, content in before.items():  # nothing lost or changed (the log only grew)
        assert after[path].startswith(content) if path == "run.log" else after[path] == content
    assert set(after) == set(before)


def test_two_launches_in_the_same_second_get_their_own_folders(data, tmp_path):
    args = [*COMMON, f"data.root={data}", "data.objects=[obj_a]"]
    with cli_process(args, tmp_path) as first, cli_process(args, tmp_path) as second:
        for p in (first, second):
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "outputs" / "runs" / "persam").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


def test_gpu_asked_without_one_stops_once_before_any_work(data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for override, advice in (
        ("backbone.device=cuda", "backbone.device=cpu"),
        ("trainer=gpu", "trainer=cpu"),
    ):
        out = tmp_path / override.replace("=", "_")
        proc = run_app(
            [*COMMON, f"data.root={data}", override, f"hydra.run.dir={out}"], cwd=tmp_path
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 2 and advice in log and "Traceback" not in log
        assert log.count("GPU was asked for") == 1
        assert not (out / "metrics.json").exists() and not (out / "masks").exists()


def test_unwritable_cache_warns_once_and_the_run_goes_on(data, tmp_path):
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("")
    out = tmp_path / "out"
    proc = run_app(
        [*COMMON, f"data.root={data}", "data.objects=[obj_a,obj_b]", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env={"PERSAM_CACHE_DIR": str(blocker)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("going on without caching") == 1 and str(blocker / "embeddings") in log
    metrics = _metrics(out)
    assert all(o["status"] == "ok" for o in metrics["objects"].values())


# -- interruptions -----------------------------------------------------------------------------
def _kill_after_first_object(proc: subprocess.Popen, metrics: Path, sig: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                "the run ended before it could be interrupted: " + proc.stderr.read()[-2000:]
            )
        try:
            if json.loads(metrics.read_text()).get("objects"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, sig)


def test_ctrl_c_keeps_the_log_marks_incomplete_and_resume_finishes(data, tmp_path):
    out = tmp_path / "out"
    args = [*COMMON, f"data.root={data}", f"hydra.run.dir={out}"]
    with cli_process(args, tmp_path) as proc:  # SIGINT deliverable however pytest was started
        _kill_after_first_object(proc, out / "metrics.json", signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    interrupted = [line for line in (stdout + stderr).splitlines() if "Interrupted" in line]
    assert len(interrupted) == 1 and "resume=true" in interrupted[0]
    assert "Interrupted" in (out / "run.log").read_text()
    metrics = _metrics(out)
    assert metrics["complete"] is False
    assert metrics["expected"] == ["obj_a", "obj_b", "obj_c", "obj_d"]
    done = dict(metrics["objects"])
    assert done and len(done) < 4
    kept = {p: b for p, b in tree(out / "masks").items() if p.split("/")[0] in done}

    proc = run_app([*args, "resume=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _metrics(out)
    assert metrics["complete"] is True and list(metrics["objects"]) == metrics["expected"]
    for name, entry in done.items():  # finished objects kept exactly
        assert metrics["objects"][name] == entry
    after = tree(out / "masks")
    assert all(after[p] == b for p, b in kept.items())
    assert {p.split("/")[0] for p in after} == {"obj_a", "obj_b", "obj_c", "obj_d"}


def test_killed_sweep_job_is_reported_incomplete_then_resumed(data, tmp_path):
    """The acceptance path: a sweep job killed mid-run, reported, resumed in its folder."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *COMMON,
        f"data.root={data}",
        "method.refine_steps=0,1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    with cli_process(args, tmp_path) as proc:
        _kill_after_first_object(proc, sweep / "0" / "metrics.json", signal.SIGKILL)
        proc.communicate(timeout=60)
    assert _metrics(sweep / "0")["complete"] is False

    report = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 1  # nothing complete to rank
    assert "incomplete" in report.stderr and "never started" in report.stderr
    assert "method.refine_steps=1" in report.stderr and "method.refine_steps=2" in report.stderr

    # resume the killed job in its folder, with nothing but resume=true and the folder
    before = _metrics(sweep / "0")["objects"]
    proc = run_app(["resume=true", f"hydra.run.dir={sweep / '0'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _metrics(sweep / "0")
    assert resumed["complete"] is True and len(resumed["objects"]) == 4
    assert all(resumed["objects"][k] == v for k, v in before.items())
    # ... and one job that never started, in the folder the report names
    proc = run_app(
        [*COMMON, f"data.root={data}", "method.refine_steps=1", f"hydra.run.dir={sweep / '1'}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_app([str(sweep)], cwd=tmp_path, module="persam.report")
    assert report.returncode == 0, report.stderr
    md = (sweep / "report.md").read_text()
    ranked = md.split("## IoU per object")[0]
    assert "| method.refine_steps=0 |" in ranked and "| method.refine_steps=1 |" in ranked
    assert "method.refine_steps=2" not in ranked  # never started: listed, not ranked
    problems = md.split("## Runs with problems")[1]
    assert "never started" in problems and "method.refine_steps=2" in problems
    assert "incomplete" not in problems


def test_ctrl_c_during_a_persam_f_fit_is_the_same_interruption(data, tmp_path):
    """Lightning turns Ctrl-C inside `Trainer.fit` into sys.exit(1); the run still stops with
    its one-line message and an incomplete metrics.json; a resume that changes the config is
    refused, naming the field."""
    out = tmp_path / "out"
    args = [
        *COMMON,
        "method=persam_f",
        "method.scale_weights.fused=eager",
        "logger=csv",
        f"data.root={data}",
        "data.objects=[obj_a]",
        f"hydra.run.dir={out}",
    ]
    lines: list[str] = []
    with cli_process(
        [*args, "method.scale_weights.steps=100000000"], tmp_path, stderr=subprocess.STDOUT
    ) as proc:
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
        reader.start()
        deadline = time.monotonic() + 600
        while not list((out / "csv").rglob("metrics.csv")):  # the fit has logged its first losses
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=600)
        reader.join(timeout=60)
    output = "".join(lines)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    assert sum("Interrupted" in line for line in output.splitlines()) == 1
    metrics = _metrics(out)
    assert metrics["complete"] is False and metrics["objects"] == {}
    assert "Interrupted" in (out / "run.log").read_text()
    # resuming with another configuration is refused, naming the field; nothing is changed
    before = tree(out)
    proc = run_app([*args, "method.scale_weights.steps=5", "resume=true"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "method.scale_weights.steps: recorded 100000000, now 5" in proc.stdout + proc.stderr
    after = tree(out)
    assert all(after[p] == b for p, b in before.items() if p != "run.log")
