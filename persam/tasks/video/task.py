"""The video task of the runner: one unit per sequence.

For a sequence: check its files, learn every object of frame 0, segment frames 1..T-1, write
`Annotations/<seq>/<frame>.png` (frame 0 = the given annotation) and `overlays/<seq>.gif`, and
score J&F against the annotations when every frame has one. A sequence that fails (bad file,
empty annotation, the official mode's crash on an empty mask) is recorded with its error; the
others still run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from persam.data.perseg import DataError
from persam.metrics import video as vos
from persam.tasks.runner import Task
from persam.tasks.video.outputs import overlay_frame, write_gif, write_label_png
from persam.tasks.video.policy import VideoPolicy
from persam.tasks.video.segmenter import EmptyObjectError, PerFrameSegmenter, VideoSegmenter

log = logging.getLogger(__name__)

OBJECT_FIELDS = ("j_mean", "f_mean", "j_recall", "f_recall", "j_decay", "f_decay")


class VideoTask(Task):
    """Video object segmentation over the sequences of a `DavisDataset`-like dataset.

    Args:
      method: a PerSAM or PerSAMF (its backbone, cached encoder, PerSAM-F fit options).
      dataset: has `names` and `sequence(name)` -> `VideoSequence`.
      run_dir, run_logger: the run folder and experiment logger.
      policy: the `video` config (`VideoPolicy`): official or tracked.
      overlays: write `overlays/<seq>.gif`.
    """

    unit_key = "sequences"
    columns = ["sequence", "status", "jf", "j_mean", "f_mean", "n_frames", "n_objects", "error"]
    expected_errors = (DataError, EmptyObjectError, ValueError, OSError, ArithmeticError)

    def __init__(
        self,
        method,
        dataset,
        run_dir: str | Path,
        run_logger=None,
        policy: VideoPolicy | None = None,
        overlays: bool = True,
        **_: Any,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.run_logger = run_logger
        self.policy = policy or VideoPolicy()
        self.overlays = overlays
        per_frame = getattr(method, "video_per_frame", False)
        self.segmenter = (PerFrameSegmenter if per_frame else VideoSegmenter)(method, self.policy)

    def units(self) -> list[str]:
        return list(self.dataset.names)

    def failed_fields(self, name: str, exc: BaseException) -> dict[str, Any]:
        return {"jf": None, "j_mean": None, "f_mean": None, "n_frames": None, "objects": {}}

    def _lightning_logger(self):
        return None if self.run_logger is None else self.run_logger.logger

    def run_unit(self, name: str) -> dict[str, Any]:
        seq = self.dataset.sequence(name)
        seq.check()
        labels0, palette = seq.first
        out_dir = self.run_dir / "Annotations" / name
        gif = self.run_dir / "overlays" / f"{name}.gif"
        # A sequence is always redone whole: drop what an interrupted run left of it.
        if out_dir.exists():
            shutil.rmtree(out_dir)
        gif.unlink(missing_ok=True)
        n = len(seq)
        first = seq.frame(0)
        write_label_png(out_dir / f"{seq.stems[0]}.png", labels0, palette)
        t0 = time.perf_counter()
        objects = self.segmenter.learn(first, labels0, logger=self._lightning_logger(), name=name)
        learn_seconds = time.perf_counter() - t0
        ids = [o.id for o in objects]
        warnings = list(seq.warnings) + [w for o in objects for w in o.warnings]
        gts = [seq.annotation_path(i).is_file() for i in range(n)]
        scorer = vos.SequenceScorer(ids, n) if all(gts) else None
        if scorer is None:
            missing = [seq.stems[i] for i in range(n) if not gts[i]]
            warnings.append(
                f"not scored: no annotation for frame(s) {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
        frames = []
        if self.overlays:
            frames.append(overlay_frame(first, labels0, palette))

        def images():
            for i in range(1, n):
                yield i, seq.frame(i)

        t1 = time.perf_counter()
        for out in self.segmenter.run(objects, labels0, images()):
            write_label_png(out_dir / f"{seq.stems[out.index]}.png", out.labels, palette)
            warnings += out.warnings
            if scorer is not None:
                scorer.add(out.index, out.labels, seq.annotation(out.index))
            if self.overlays:
                frames.append(overlay_frame(out.image, out.labels, palette, out.points))
        segment_seconds = time.perf_counter() - t1
        if self.overlays:
            write_gif(gif, frames)
            if self.run_logger is not None:
                self.run_logger.image(name, gif)  # an animation: logged as a video
        scores = (
            scorer.result()
            if scorer is not None
            else {"jf": None, "j_mean": None, "f_mean": None, "objects": {}}
        )
        objects_entry = {str(o): dict(scores["objects"].get(str(o), {})) for o in ids}
        for obj in objects:
            if obj.fit is not None:
                objects_entry[str(obj.id)].update(
                    mask_weights=[float(w) for w in obj.weights],
                    fit_seconds=float(obj.fit.seconds),
                    final_loss=float(obj.fit.final_loss),
                )
        for w in warnings:
            log.warning("%s: %s", name, w)
        return {
            "status": "ok",
            "error": None,
            "jf": scores["jf"],
            "j_mean": scores["j_mean"],
            "f_mean": scores["f_mean"],
            "n_frames": n,
            "n_objects": len(ids),
            "objects": objects_entry,
            "learn_seconds": round(learn_seconds, 3),
            "fps": round((n - 1) / segment_seconds, 3) if segment_seconds > 0 else None,
            "warnings": warnings,
        }

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ok = {n: r for n, r in results.items() if r.get("status") == "ok"}
        summary = vos.overall(ok)
        summary["mode"] = self.policy.mode
        summary["n_sequences"] = len(results)
        return summary

    def csv_rows(self, results: dict[str, dict[str, Any]]) -> tuple[str, list[dict]]:
        """One row per object of every sequence (metrics.csv, the logger's `objects` table)."""
        rows = []
        for name, entry in results.items():
            objects = entry.get("objects") or {}
            if not objects:
                rows.append({"sequence": name, "object": None, "status": entry.get("status"),
                             "error": entry.get("error")})  # fmt: skip
            for obj, values in objects.items():
                row = {"sequence": name, "object": obj, "status": entry.get("status")}
                row.update({k: values.get(k) for k in OBJECT_FIELDS})
                if "mask_weights" in values:
                    row["mask_weights"] = values["mask_weights"]
                row["error"] = entry.get("error")
                rows.append(row)
        return "objects", rows
