"""The PerSeg task: for every object, learn from its reference, segment its images, score, write.

One unit of the runner (`persam.tasks.runner`) is one object. Its entry in metrics.json holds the
object's IoU, boundary IoU and accuracy over its test images (the reference excluded), its
warnings and, for PerSAM-F, the fitted weights (also gathered in `scale_weights.json`), and
its instance precision / recall (`instances`). A bad file, an empty reference mask or a failed
fit fails that object alone (the runner records the error and goes on).

With `data.reference=all` every annotated image of an object is its reference in turn: each
reference's outputs go to `by_reference/<stem>/` (laid out as a run folder), its iou, biou and
acc to `by_reference.<stem>` of the entry, whose iou / biou / acc are their means (`iou_mean`,
`iou_std`: the population standard deviation over the references).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from persam.data.instances import (
    SOURCE_COMPONENTS,
    SOURCE_ROOT,
    ground_truth_instances,
    write_instances,
)
from persam.data.perseg import DataError, ObjectSet, foreground
from persam.data.perturb import perturb_annotation
from persam.metrics.image import InstanceMeter, ObjectMeter, mean_over_objects
from persam.model.method import EmptyReferenceMask, PerSAM, Target
from persam.tasks.loggers import RunLogger
from persam.tasks.outputs import OBJECT_COLUMNS, write_mask, write_overlay
from persam.tasks.runner import Task

log = logging.getLogger(__name__)

EXPECTED_ERRORS = (DataError, EmptyReferenceMask, ValueError, ArithmeticError, OSError)


def _fit_fields(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target.mask_weights is not None:
        out["mask_weights"] = [float(w) for w in target.mask_weights]
    if target.fit is not None:
        out["fit_seconds"] = float(target.fit.fit_seconds)
        out["compile_seconds"] = float(target.fit.compile_seconds)
        out["final_loss"] = float(target.fit.final_loss)
    return out


def _scale_weights(name: str, entry: dict[str, Any]) -> dict[str, list[float]]:
    """An object's PerSAM-F weights for scale_weights.json (`<object>/<reference>` keys for
    data.reference=all)."""
    if entry.get("mask_weights") is not None:
        return {name: entry["mask_weights"]}
    return {
        f"{name}/{ref}": e["mask_weights"]
        for ref, e in (entry.get("by_reference") or {}).items()
        if "mask_weights" in e
    }


class ObjectTask(Task):
    """PerSeg-layout objects (PerSeg, the synthetic world): one unit per object.

    Args:
      method: a built `PerSAM` / `PerSAMF`.
      dataset: a `PerSegDataset`.
      run_dir: where masks/<object>/<stem>.png and overlays/ go.
      run_logger: receives a few overlays.
      overlays: write an overlay (image, mask, points) per segmented image.
    """

    unit_key = "objects"
    columns = OBJECT_COLUMNS
    expected_errors = EXPECTED_ERRORS

    def __init__(
        self,
        method: PerSAM,
        dataset,
        run_dir: str | Path,
        run_logger: RunLogger | None = None,
        overlays: bool = True,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.run_logger = run_logger or RunLogger(None)
        self.overlays = overlays
        self.instances_root = getattr(dataset, "instances_root", None)
        self.perturbation = (
            getattr(dataset, "reference_perturbation", "none"),
            getattr(dataset, "perturbation_amount", 0.0),
        )

    def units(self) -> list[str]:
        return list(self.dataset.names)

    def run_unit(self, name: str) -> dict[str, Any]:
        """Segment every image of object `name` (from each reference); its metrics.json entry."""
        obj: ObjectSet = self.dataset.object(name)
        self._current = obj  # its (reading) warnings go into the entry even if it fails
        if not obj.all_references:
            entry, target = self._reference_run(obj, self.run_dir, obj.name)
            warnings = list(obj.warnings) + entry.pop("warnings")
            return {
                "status": "ok",
                "error": None,
                **entry,
                **_fit_fields(target),
                "warnings": warnings,
            }

        by_reference: dict[str, dict[str, Any]] = {}
        counts = InstanceMeter()
        per_reference: list[str] = []
        for ref in obj.references:  # the copies share obj.warnings (reading warnings)
            entry, target = self._reference_run(
                obj.with_reference(ref), self.run_dir / "by_reference" / ref, f"{obj.name}/{ref}"
            )
            per_reference += [f"reference {ref}: {w}" for w in entry.pop("warnings")]
            for key in ("found", "predicted", "ground_truth", "n_images"):
                setattr(counts, key, getattr(counts, key) + entry["instances"][key])
            by_reference[ref] = {**entry, **_fit_fields(target)}
        warnings = list(obj.warnings) + per_reference
        refs = list(by_reference.values())
        ious = np.array([e["iou"] for e in refs])
        return {
            "status": "ok",
            "error": None,
            "iou": float(ious.mean()),
            "biou": float(np.mean([e["biou"] for e in refs])),
            "acc": float(np.mean([e["acc"] for e in refs])),
            "n_images": int(sum(e["n_images"] for e in refs)),
            "iou_mean": float(ious.mean()),
            "iou_std": float(ious.std()),
            "n_references": len(refs),
            "instances": {**counts.result(), "source": self._instance_source()},
            "by_reference": by_reference,
            "warnings": warnings,
        }

    def _instance_source(self) -> str:
        return SOURCE_COMPONENTS if self.instances_root is None else SOURCE_ROOT

    def _reference_run(
        self, obj: ObjectSet, out_dir: Path, fit_name: str
    ) -> tuple[dict[str, Any], Target]:
        """Learn from `obj.reference`, segment every image of `obj`, write and score them.

        Writes `out_dir/masks/<object>/<stem>.png`, `out_dir/instances/<object>/<stem>.png` (the
        indexed instance map) and the overlays; returns the reference's entry (iou, biou, acc,
        n_images, instances, warnings) and its target.
        """
        method = self.method
        warnings: list[str] = []
        kind, amount = self.perturbation
        # the reference, and the k - 1 images after it with data.shots=k (learned together)
        ref_images = {s: obj.read_image(s) for s in obj.shot_stems()}
        ref_masks = [
            perturb_annotation(obj.read_annotation(s, image.shape), kind, amount, obj.name, s)
            for s, image in ref_images.items()
        ]
        images, masks = list(ref_images.values()), ref_masks
        if len(images) == 1:
            images, masks = images[0], masks[0]
        try:
            target = method.learn_annotations(
                images, masks, name=fit_name, logger=self.run_logger.logger
            )
        except EmptyReferenceMask as exc:
            if kind == "none":
                raise DataError(
                    f"Reference annotation {obj.reference_annotation}: {exc}. Draw a larger "
                    f"mask, or choose another reference image (data.reference=NN)."
                ) from exc
            raise EmptyReferenceMask(
                f"object '{obj.name}': after data.reference_perturbation={kind} with "
                f"data.perturbation_amount={amount}: {exc}; lower the amount"
            ) from exc
        meter, instance_meter = ObjectMeter(), InstanceMeter()
        for stem in obj.images:
            image = ref_images[stem] if stem in ref_images else obj.read_image(stem)
            pred = method.segment(image, target)
            write_mask(out_dir / "masks" / obj.name / f"{stem}.png", pred.mask)
            instance_map = pred.instance_map()
            write_instances(out_dir / "instances" / obj.name / f"{stem}.png", instance_map)
            if self.overlays:
                out = out_dir / "overlays" / obj.name / f"{stem}.jpg"
                write_overlay(out, image, pred.mask, pred.coords, pred.labels)
                self.run_logger.image(f"{obj.name}/{stem}", out)
            warnings += [f"{stem}: {w}" for w in pred.warnings]
            if stem not in ref_images:
                ann = obj.annotations[stem]
                if ann.is_file():
                    gt = foreground(obj.read_annotation(stem, image.shape))
                    meter.update(pred.mask, gt)
                    instance_meter.update(
                        instance_map,
                        ground_truth_instances(self.instances_root, obj.name, stem, gt),
                    )
                else:
                    msg = (
                        f"{stem}: no annotation {ann}; image segmented but not scored. Add the "
                        f"mask PNG to score it."
                    )
                    log.warning(msg)
                    warnings.append(msg)
        instances = {**instance_meter.result(), "source": self._instance_source()}
        if meter.n_images:
            scores = meter.result()
        else:
            scores = {"iou": None, "biou": None, "acc": None, "n_images": 0}
            msg = (
                f"object '{obj.name}' has no scorable test image (no image besides the "
                f"reference {obj.reference} has an annotation): n_images 0, left out of the "
                f"means. Add test images with masks under Images/{obj.name}/ and "
                f"Annotations/{obj.name}/."
            )
            log.warning(msg)
            warnings.append(msg)
        return {**scores, "instances": instances, "warnings": warnings}, target

    def failed_fields(self, name: str, exc: BaseException) -> dict[str, Any]:
        current = getattr(self, "_current", None)
        if current is not None and current.name == name:
            warnings = list(current.warnings)
        else:
            try:
                warnings = list(self.dataset.object(name).warnings)
            except DataError:
                warnings = []
        return {"iou": None, "biou": None, "acc": None, "n_images": 0, "warnings": warnings}

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """mIoU, mBIoU, mAcc: means over the objects that were scored; the instance precision,
        recall and f1 (means over objects) and, for data.reference=all, `iou_mean` / `iou_std`
        (means over objects). Also (re)writes scale_weights.json from the entries."""
        ok = [r for r in results.values() if r["status"] == "ok" and r.get("n_images", 0) > 0]
        means = mean_over_objects(ok) if ok else {"miou": None, "mbiou": None, "macc": None}
        summary = {"method": self.method.name, **means, "n_objects": len(results)}
        if ok:
            summary["instances"] = {
                k: float(np.mean([r["instances"][k] for r in ok]))
                for k in ("precision", "recall", "f1")
            }
            summary["instances"]["source"] = self._instance_source()
            summary["instances"]["matching"] = "greedy one-to-one, IoU >= 0.5"
            if self.instances_root is None:
                summary["instances"]["connectivity"] = 8
        with_refs = [r for r in ok if "iou_std" in r]
        if with_refs:
            summary["iou_mean"] = float(np.mean([r["iou_mean"] for r in with_refs]))
            summary["iou_std"] = float(np.mean([r["iou_std"] for r in with_refs]))
        weights: dict[str, list[float]] = {}
        for name, entry in results.items():
            weights.update(_scale_weights(name, entry))
        if weights:  # PerSAM-F's (its module imports Lightning: only where it is used)
            from persam.model.scale_weights import write_scale_weights

            write_scale_weights(self.run_dir, weights)
        return summary
