"""One run: for every object, learn from its reference, segment its images, score, write, log.

Failures are per object: a bad file, an empty reference mask or a failed fit marks that object
`failed` (with the error) in metrics.json and the run goes on with the next object.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from persam.data.instances import (
    SOURCE_COMPONENTS,
    SOURCE_ROOT,
    ground_truth_instances,
    write_instances,
)
from persam.data.perseg import DataError, ObjectSet, foreground, read_annotation, read_image
from persam.data.perturb import perturb_annotation
from persam.loggers import RunLogger
from persam.method import EmptyReferenceMask, PerSAM, Target
from persam.metrics import InstanceMeter, ObjectMeter, mean_over_objects
from persam.outputs import (
    OBJECT_COLUMNS,
    write_mask,
    write_metrics,
    write_overlay,
    write_scale_weights,
)

log = logging.getLogger(__name__)

EXPECTED_ERRORS = (DataError, EmptyReferenceMask, ValueError, ArithmeticError, OSError)


def _fit_fields(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target.mask_weights is not None:
        out["mask_weights"] = [float(w) for w in target.mask_weights]
    if target.fit is not None:
        out["fit_seconds"] = float(target.fit.seconds)
        out["final_loss"] = float(target.fit.final_loss)
    return out


def _reference_run(
    method: PerSAM,
    obj: ObjectSet,
    out_dir: Path,
    run_logger: RunLogger,
    perturbation: tuple[str, float],
    instances_root: Path | None,
    overlays: bool = True,
    progress: tqdm | None = None,
    name: str | None = None,
) -> tuple[dict[str, Any], Target]:
    """Learn from `obj.reference`, segment every image of `obj`, write and score them.

    Writes `out_dir/masks/<object>/<stem>.png`, `out_dir/instances/<object>/<stem>.png` (indexed
    instance map) and the overlays; returns the reference's entry (iou, biou, acc, n_images,
    instances, warnings) and its target.
    """
    warnings: list[str] = []
    ref_image = read_image(obj.reference_image)
    ref_mask = read_annotation(obj.reference_annotation, ref_image.shape)
    kind, amount = perturbation
    ref_mask = perturb_annotation(ref_mask, kind, amount, obj.name, obj.reference)
    lightning_logger = run_logger.logger
    target = method.learn(ref_image, ref_mask, name=name or obj.name, logger=lightning_logger)
    meter = ObjectMeter()
    instance_meter = InstanceMeter()
    for stem, path in obj.images.items():
        image = ref_image if stem == obj.reference else read_image(path)
        pred = method.segment(image, target)
        write_mask(out_dir / "masks" / obj.name / f"{stem}.png", pred.mask)
        instance_map = pred.instance_map()
        write_instances(out_dir / "instances" / obj.name / f"{stem}.png", instance_map)
        if overlays:
            out = out_dir / "overlays" / obj.name / f"{stem}.jpg"
            write_overlay(out, image, pred.mask, pred.coords, pred.labels)
            run_logger.image(f"{obj.name}/{stem}", out)
        warnings += [f"{stem}: {w}" for w in pred.warnings]
        if stem != obj.reference:
            ann = obj.annotations[stem]
            if ann.is_file():
                gt = foreground(read_annotation(ann, image.shape))
                meter.update(pred.mask, gt)
                gt_instances = ground_truth_instances(instances_root, obj.name, stem, gt)
                instance_meter.update(instance_map, gt_instances)
            else:
                msg = f"{stem}: no annotation {ann}; image segmented but not scored"
                log.warning(msg)
                warnings.append(msg)
        if progress is not None:
            progress.update(1)
    result = {**meter.result(), "instances": instance_meter.result(), "warnings": warnings}
    return result, target


def segment_object(
    method: PerSAM,
    obj: ObjectSet,
    run_dir: Path,
    run_logger: RunLogger,
    overlays: bool = True,
    progress: tqdm | None = None,
    dataset=None,
) -> dict[str, Any]:
    """Segment every image of `obj` (from each of its references); returns its metrics entry.

    With `data.reference=all` every annotated image is the reference in turn: its outputs go to
    `by_reference/<stem>/` (laid out as a run folder) and `by_reference.<stem>` of the entry
    holds its iou, biou, acc, the object's iou/biou/acc being their means (`iou_std`: the
    population standard deviation).
    """
    perturbation = (
        getattr(dataset, "reference_perturbation", "none"),
        getattr(dataset, "perturbation_amount", 0.0),
    )
    instances_root = getattr(dataset, "instances_root", None)
    source = SOURCE_COMPONENTS if instances_root is None else SOURCE_ROOT
    warnings = list(obj.warnings)
    if not obj.all_references:
        entry, target = _reference_run(
            method, obj, run_dir, run_logger, perturbation, instances_root, overlays, progress
        )
        warnings += entry.pop("warnings")
        entry["instances"]["source"] = source
        result = {"status": "ok", "error": None, **entry, **_fit_fields(target)}
        result["warnings"] = warnings
        return result

    by_reference: dict[str, dict[str, Any]] = {}
    counts = InstanceMeter()
    weights = {}
    for ref in obj.references:
        entry, target = _reference_run(
            method,
            obj.with_reference(ref),
            run_dir / "by_reference" / ref,
            run_logger,
            perturbation,
            instances_root,
            overlays,
            progress,
            name=f"{obj.name}/{ref}",
        )
        warnings += [f"reference {ref}: {w}" for w in entry.pop("warnings")]
        inst = entry["instances"]
        counts.found += inst["found"]
        counts.predicted += inst["predicted"]
        counts.ground_truth += inst["ground_truth"]
        counts.n_images += inst["n_images"]
        entry.update(_fit_fields(target))
        if target.mask_weights is not None:
            weights[ref] = [float(w) for w in target.mask_weights]
        by_reference[ref] = entry
    ious = np.array([e["iou"] for e in by_reference.values()])
    result = {
        "status": "ok",
        "error": None,
        "iou": float(ious.mean()),
        "biou": float(np.mean([e["biou"] for e in by_reference.values()])),
        "acc": float(np.mean([e["acc"] for e in by_reference.values()])),
        "n_images": int(sum(e["n_images"] for e in by_reference.values())),
        "iou_mean": float(ious.mean()),
        "iou_std": float(ious.std()),
        "n_references": len(by_reference),
        "instances": {**counts.result(), "source": source},
        "by_reference": by_reference,
        "warnings": warnings,
    }
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
    weights: dict[str, list[float]] = {}
    bar = tqdm(total=total, desc="images", unit="img", disable=not progress, dynamic_ncols=True)
    for obj in objects:
        bar.set_postfix_str(obj.name)
        start = time.perf_counter()
        before = bar.n
        try:
            result = segment_object(method, obj, run_dir, run_logger, overlays, bar, dataset)
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
        weights.update(_scale_weights(obj.name, result))
        if weights:
            write_scale_weights(run_dir, weights)
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


def _scale_weights(name: str, result: dict[str, Any]) -> dict[str, list[float]]:
    """The object's PerSAM-F weights for scale_weights.json (`<object>/<reference>` keys for
    data.reference=all)."""
    if "mask_weights" in result:
        return {name: result["mask_weights"]}
    return {
        f"{name}/{ref}": entry["mask_weights"]
        for ref, entry in result.get("by_reference", {}).items()
        if "mask_weights" in entry
    }


def _summarise(summary: dict[str, Any]) -> None:
    ok = [r for r in summary["objects"].values() if r["status"] == "ok" and r["n_images"] > 0]
    means = mean_over_objects(ok) if ok else {"miou": None, "mbiou": None, "macc": None}
    summary.update(means)
    with_instances = [r["instances"] for r in ok if "instances" in r]
    if with_instances:
        summary["instances"] = {
            k: float(np.mean([i[k] for i in with_instances])) for k in ("precision", "recall", "f1")
        }
        summary["instances"]["source"] = with_instances[0]["source"]
    with_refs = [r for r in ok if "iou_std" in r]
    if with_refs:
        summary["iou_mean"] = float(np.mean([r["iou_mean"] for r in with_refs]))
        summary["iou_std"] = float(np.mean([r["iou_std"] for r in with_refs]))
    summary["n_objects"] = len(summary["objects"])
    summary["n_failed"] = sum(r["status"] == "failed" for r in summary["objects"].values())
    summary["failed"] = [n for n, r in summary["objects"].items() if r["status"] == "failed"]
