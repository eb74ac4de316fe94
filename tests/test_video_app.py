"""`python -m persam.video` end to end: configs, outputs, J&F checked from outside, resume, bad
input, W&B offline. Its console function runs in-process (`run_app`), except for the console
command's exit status on a bad field and the W&B run (W&B starts a service process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, run_app, run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from persam.conf import CONFIG_DIR
from persam.data.davis import davis_palette
from persam.tasks.video.policy import VideoPolicy

SMALL = ["data.num_sequences=2", "data.num_frames=6"]  # crossing, exit-return


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("video", overrides=overrides)


@pytest.mark.parametrize("video", ["tracked", "official"])
@pytest.mark.parametrize("method", ["persam", "persam_f"])
def test_video_config_composes_with_the_shared_groups(video, method) -> None:
    cfg = _compose([f"video={video}", f"method={method}", "data=davis", "data.root=/x"])
    policy = instantiate(cfg.video)
    assert isinstance(policy, VideoPolicy) and policy.mode == video
    assert policy.points_for(method == "persam_f") == (1 if method == "persam_f" else 2)
    assert cfg.data._target_ == "persam.data.davis.DavisDataset"
    assert cfg.backbone.name == "embedded" and "_target_" in cfg.trainer
    # `video.mode=official` on the default group is the official algorithm
    assert instantiate(_compose(["video.mode=official"]).video).official
    assert _compose([]).data._target_.endswith("SyntheticVideoDataset")


@pytest.mark.slow
def test_bad_video_field_is_a_clear_error(tmp_path) -> None:
    proc = run_app(["video.mode=faithful", f"hydra.run.dir={tmp_path}"], ROOT, "persam.video")
    assert proc.returncode == 2
    assert "video.mode must be one of official, tracked" in proc.stderr + proc.stdout


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_default_run_writes_outputs_and_its_jf_matches_vos_benchmark(tmp_path) -> None:
    from vos_benchmark.evaluator import Evaluator

    out, cache_dir = tmp_path / "run", tmp_path / "cache"
    env = {"PERSAM_CACHE_DIR": str(cache_dir)}  # its own cache: the videos this run generated
    proc = run_app([*SMALL, f"hydra.run.dir={out}"], ROOT, "persam.video", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_failed"] == 0
    assert metrics["expected"] == ["crossing", "exit-return"]
    cache = cache_dir / "synthetic_video"
    (gt_root,) = cache.glob("*/Annotations/480p")
    j_all, f_all = [], []
    for seq, entry in metrics["sequences"].items():
        assert entry["status"] == "ok" and entry["n_frames"] == 6
        frames = sorted((gt_root / seq).glob("*.png"))
        evaluator = Evaluator()
        for i, gt_path in enumerate(frames):
            ours = Image.open(out / "Annotations" / seq / gt_path.name)
            gt = Image.open(gt_path)
            assert ours.mode == "P" and ours.getpalette() == gt.getpalette()
            if i == 0:  # frame 0 is the given annotation
                np.testing.assert_array_equal(np.array(ours), np.array(gt))
            elif i < len(frames) - 1:
                evaluator.feed_frame(np.array(ours), np.array(gt))
        j, f = evaluator.conclude()
        for obj, values in entry["objects"].items():
            assert values["j_mean"] * 100 == pytest.approx(j[int(obj)], abs=1e-6)
            assert values["f_mean"] * 100 == pytest.approx(f[int(obj)], abs=1e-6)
            for k in ("j_recall", "f_recall"):
                assert 0 <= values[k] <= 1
            j_all.append(j[int(obj)])
            f_all.append(f[int(obj)])
        assert (out / "overlays" / f"{seq}.gif").stat().st_size > 1000
        assert Image.open(out / "overlays" / f"{seq}.gif").n_frames == 6
    assert metrics["jf"] * 100 == pytest.approx((np.mean(j_all) + np.mean(f_all)) / 2, abs=1e-6)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("sequence,object,status,j_mean,f_mean,j_recall,f_recall")
    assert len(rows) == 1 + sum(len(e["objects"]) for e in metrics["sequences"].values())


@pytest.mark.slow
def test_tracked_is_at_least_as_good_as_official_on_the_synthetic_videos(tmp_path) -> None:
    scores = {}
    for mode in ("official", "tracked"):
        out = tmp_path / mode
        proc = run_app(
            [*SMALL, "data.num_frames=12", f"video={mode}", "logger=none", "overlays=false",
             f"hydra.run.dir={out}"],
            ROOT,
            "persam.video",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        scores[mode] = json.loads((out / "metrics.json").read_text())
    assert scores["tracked"]["jf"] >= scores["official"]["jf"]
    exit_t = scores["tracked"]["sequences"]["exit-return"]["objects"]["1"]["j_mean"]
    exit_o = scores["official"]["sequences"]["exit-return"]["objects"]["1"]["j_mean"]
    assert exit_t > exit_o + 0.1  # the object that leaves and comes back


@pytest.mark.slow
def test_resume_keeps_finished_sequences_and_redoes_a_partial_one(tmp_path) -> None:
    out = tmp_path / "run"
    args = [*SMALL, "logger=none", f"hydra.run.dir={out}"]
    assert run_app(args, ROOT, "persam.video").returncode == 0
    first = _pngs(out / "Annotations" / "crossing")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "Annotations" / "crossing").iterdir()}
    # an interrupted run: exit-return half written, not in metrics.json
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["sequences"]["exit-return"]
    metrics["complete"] = False
    (out / "metrics.json").write_text(json.dumps(metrics))
    partial = out / "Annotations" / "exit-return"
    for p in sorted(partial.glob("*.png"))[3:]:
        p.unlink()
    (partial / "00004.png").write_bytes(b"garbage")
    proc = run_app([*args, "resume=true"], ROOT, "persam.video")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and set(metrics["sequences"]) == {"crossing", "exit-return"}
    assert _pngs(out / "Annotations" / "crossing") == first
    assert {
        p.name: p.stat().st_mtime_ns for p in (out / "Annotations" / "crossing").iterdir()
    } == mtimes
    assert len(list(partial.glob("*.png"))) == 6
    Image.open(partial / "00004.png").load()


def _write_sequence(root: Path, name: str, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        img_dir = root / "JPEGImages" / "480p" / name
        ann_dir = root / "Annotations" / "480p" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 80, (96, 128, 3), dtype=np.uint8)
        labels = np.zeros((96, 128), np.uint8)
        labels[20 + i : 60 + i, 20:60] = 1
        img[labels == 1] = (220, 60, 40)
        Image.fromarray(img).save(img_dir / f"{i:05d}.jpg")
        png = Image.fromarray(labels, mode="P")
        png.putpalette(davis_palette())
        png.save(ann_dir / f"{i:05d}.png")


@pytest.mark.slow
def test_bad_sequence_fails_alone_with_the_file_named(tmp_path) -> None:
    root = tmp_path / "DAVIS"
    for name in ("good", "no-first", "gap"):
        _write_sequence(root, name)
    (root / "Annotations" / "480p" / "no-first" / "00000.png").unlink()
    (root / "JPEGImages" / "480p" / "gap" / "00001.jpg").unlink()
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("good\nno-first\nmissing\ngap\n")
    out = tmp_path / "run"
    proc = run_app(
        ["data=davis", f"data.root={root}", "logger=none", f"hydra.run.dir={out}"],
        ROOT,
        "persam.video",
    )
    assert proc.returncode == 1
    metrics = json.loads((out / "metrics.json").read_text())
    seqs = metrics["sequences"]
    assert seqs["good"]["status"] == "ok" and seqs["good"]["jf"] is not None
    assert (
        "no-first" in seqs["no-first"]["error"]
        and "00000.png is missing" in seqs["no-first"]["error"]
    )
    assert "frames are missing" in seqs["missing"]["error"]
    assert "gaps in the frame numbering" in seqs["gap"]["error"]
    assert sorted(metrics["failed"]) == ["gap", "missing", "no-first"]
    assert metrics["complete"] is False and metrics["finished"] is True  # failed: not complete
    assert (out / "Annotations" / "good" / "00003.png").is_file()


@pytest.mark.slow
def test_wandb_offline_run_gets_tables_summary_and_overlay_videos(tmp_path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        [*SMALL, "data.num_sequences=1", "logger=wandb", f"hydra.run.dir={out}"],
        ROOT,
        "persam.video",
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = [p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*") if p.is_file()]
    assert any("media/table/sequences" in f for f in files), files
    assert any("media/table/objects" in f for f in files), files
    assert any("media/videos/overlays" in f and f.endswith(".gif") for f in files), files
    blob = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"j_mean" in blob and b"f_mean" in blob  # J&F in the run summary


@pytest.mark.slow
def test_video_sweep_and_report(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_app(
        ["-m", "video=official,tracked", "data.num_sequences=1", "data.num_frames=4",
         "logger=none", "overlays=false", f"hydra.sweep.dir={sweep}"],
        ROOT,
        "persam.video",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_app([str(sweep)], ROOT, "persam.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (sweep / "report.md").read_text()
    assert "| variant | J&F | J | F | sequences | failed |" in report
    assert "video=official" in report and "video=tracked" in report
    assert "## J&F per sequence" in report and "| crossing |" in report
    rows = (sweep / "report_sequences.csv").read_text().splitlines()
    assert rows[0].startswith("variant,sequence,status,jf,j_mean,f_mean") and len(rows) == 3
