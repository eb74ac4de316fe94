"""One run: for every object, learn from its reference, segment its images, score, write, log.

Failures are per object: a bad file, an empty reference mask or a failed fit marks that object
`failed` (with the error) in metrics.json and the run goes on with the next object.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from persam.data.perseg import DataError, ObjectSet, foreground
from persam.loggers import RunLogger
from persam.method import EmptyReferenceMask, PerSAM, Target
from persam.metrics import ObjectMeter, mean_over_objects
from persam.outputs import OBJECT_COLUMNS, write_mask, write_metrics, write_overlay

log = logging.getLogger(__name__)

EXPECTED_ERRORS = (DataError, EmptyReferenceMask, ValueError, ArithmeticError, OSError)


def _fit_fields(target: Target) -> dict[str, Any]:
    if target.fit is None:
        return {}
    return {
        "mask_weights": [float(w) for w in target.mask_weights],
        "fit_seconds": float(target.fit.seconds),
        "final_loss": float(target.fit.final_loss),
    }


def segment_object(
    method: PerSAM,
    obj: ObjectSet,
    run_dir: Path,
    run_logger: RunLogger,
    overlays: bool = True,
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Segment every image of `obj`; returns its metrics.json entry."""
    warnings = obj.warnings  # reading warnings land here too (ObjectSet.read_annotation)
    ref_image = obj.read_image(obj.reference)
    ref_mask = obj.read_annotation(obj.reference, ref_image.shape)
    lightning_logger = run_logger.logger
    try:
        target = method.learn(ref_image, ref_mask, name=obj.name, logger=lightning_logger)
    except EmptyReferenceMask as exc:
        raise DataError(
            f"Reference annotation {obj.reference_annotation}: {exc}. Draw a larger mask, or "
            f"choose another reference image (data.reference=NN)."
        ) from exc
    meter = ObjectMeter()
    for stem in obj.images:
        image = ref_image if stem == obj.reference else obj.read_image(stem)
        pred = method.segment(image, target)
        write_mask(run_dir / "masks" / obj.name / f"{stem}.png", pred.mask)
        if overlays:
            out = run_dir / "overlays" / obj.name / f"{stem}.jpg"
            write_overlay(out, image, pred.mask, pred.coords, pred.labels)
            run_logger.image(f"{obj.name}/{stem}", out)
        warnings += [f"{stem}: {w}" for w in pred.warnings]
        if stem != obj.reference:
            if obj.annotations[stem].is_file():
                meter.update(pred.mask, foreground(obj.read_annotation(stem, image.shape)))
            else:
                msg = (
                    f"{stem}: no annotation {obj.annotations[stem]}; image segmented but not "
                    f"scored. Add the mask PNG to score it."
                )
                log.warning(msg)
                warnings.append(msg)
        if progress is not None:
            progress.update(1)
    if meter.n_images:
        scores = meter.result()
    else:
        scores = {"iou": None, "biou": None, "acc": None, "n_images": 0}
        msg = (
            f"object '{obj.name}' has no scorable test image (no image besides the reference "
            f"{obj.reference} has an annotation): n_images 0, left out of the means. Add test "
            f"images with masks under Images/{obj.name}/ and Annotations/{obj.name}/."
        )
        log.warning(msg)
        warnings.append(msg)
    result = {"status": "ok", "error": None, **scores, **_fit_fields(target)}
    result["warnings"] = list(warnings)
    return result


def evaluate(
    method: PerSAM,
    dataset,
    run_dir: Path,
    run_logger: RunLogger | None = None,
    overlays: bool = True,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `method` over every object of `dataset`; writes and returns the metrics summary."""
    run_dir = Path(run_dir)
    run_logger = run_logger or RunLogger(None)
    objects = list(dataset)
    summary: dict[str, Any] = {"method": method.name, "objects": {}}
    summary.update(extra or {})
    total = sum(len(o.images) for o in objects)
    bar = tqdm(total=total, desc="images", unit="img", disable=not progress, dynamic_ncols=True)
    for obj in objects:
        bar.set_postfix_str(obj.name)
        start = time.perf_counter()
        before = bar.n
        try:
            result = segment_object(method, obj, run_dir, run_logger, overlays, bar)
        except Exception as exc:  # noqa: BLE001 - one object's failure must not stop the run
            if not isinstance(exc, EXPECTED_ERRORS):
                log.exception("Unexpected error on object '%s'", obj.name)
            log.error("Object '%s' failed: %s", obj.name, exc)
            bar.update(len(obj.images) - (bar.n - before))
            result = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "iou": None,
                "biou": None,
                "acc": None,
                "n_images": 0,
                "warnings": list(obj.warnings),
            }
        result["seconds"] = round(time.perf_counter() - start, 3)
        summary["objects"][obj.name] = result
        _summarise(summary)
        write_metrics(run_dir, summary)
    bar.close()
    run_logger.finish(
        summary,
        OBJECT_COLUMNS[:-1]
        + (
            ["mask_weights", "fit_seconds"]
            if any("mask_weights" in r for r in summary["objects"].values())
            else []
        ),
    )
    return summary


def _summarise(summary: dict[str, Any]) -> None:
    ok = [r for r in summary["objects"].values() if r["status"] == "ok" and r["n_images"] > 0]
    means = mean_over_objects(ok) if ok else {"miou": None, "mbiou": None, "macc": None}
    summary.update(means)
    summary["n_objects"] = len(summary["objects"])
    summary["n_failed"] = sum(r["status"] == "failed" for r in summary["objects"].values())
    summary["failed"] = [n for n, r in summary["objects"].items() if r["status"] == "failed"]
