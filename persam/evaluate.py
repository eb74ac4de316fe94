"""The PerSeg task: for every object, learn from its reference, segment its images, score, write.

One unit of the runner (`persam.runner`) is one object. Its entry in metrics.json holds the
object's IoU, boundary IoU and accuracy over its test images (the reference excluded), its
warnings and, for PerSAM-F, the fitted weights. A bad file, an empty reference mask or a failed
fit fails that object alone (the runner records the error and goes on).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from persam.data.perseg import DataError, ObjectSet, foreground
from persam.loggers import RunLogger
from persam.method import EmptyReferenceMask, PerSAM, Target
from persam.metrics import ObjectMeter, mean_over_objects
from persam.outputs import OBJECT_COLUMNS, write_mask, write_overlay
from persam.runner import Task

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

    def units(self) -> list[str]:
        return list(self.dataset.names)

    def run_unit(self, name: str) -> dict[str, Any]:
        """Segment every image of object `name`; returns its metrics.json entry."""
        obj: ObjectSet = self.dataset.object(name)
        self._current = obj  # its warnings go into the entry even if it fails
        method, run_dir = self.method, self.run_dir
        warnings = obj.warnings  # reading warnings land here too (ObjectSet.read_annotation)
        ref_image = obj.read_image(obj.reference)
        ref_mask = obj.read_annotation(obj.reference, ref_image.shape)
        try:
            target = method.learn(ref_image, ref_mask, name=obj.name, logger=self.run_logger.logger)
        except EmptyReferenceMask as exc:
            raise DataError(
                f"Reference annotation {obj.reference_annotation}: {exc}. Draw a larger mask, "
                f"or choose another reference image (data.reference=NN)."
            ) from exc
        meter = ObjectMeter()
        for stem in obj.images:
            image = ref_image if stem == obj.reference else obj.read_image(stem)
            pred = method.segment(image, target)
            write_mask(run_dir / "masks" / obj.name / f"{stem}.png", pred.mask)
            if self.overlays:
                out = run_dir / "overlays" / obj.name / f"{stem}.jpg"
                write_overlay(out, image, pred.mask, pred.coords, pred.labels)
                self.run_logger.image(f"{obj.name}/{stem}", out)
            warnings += [f"{stem}: {w}" for w in pred.warnings]
            if stem != obj.reference:
                ann = obj.annotations[stem]
                if ann.is_file():
                    meter.update(pred.mask, foreground(obj.read_annotation(stem, image.shape)))
                else:
                    msg = (
                        f"{stem}: no annotation {ann}; image segmented but not scored. Add the "
                        f"mask PNG to score it."
                    )
                    log.warning(msg)
                    warnings.append(msg)
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
        result = {"status": "ok", "error": None, **scores, **_fit_fields(target)}
        result["warnings"] = list(warnings)
        return result

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
        """mIoU, mBIoU, mAcc: means over the objects that were scored."""
        ok = [r for r in results.values() if r["status"] == "ok" and r.get("n_images", 0) > 0]
        means = mean_over_objects(ok) if ok else {"miou": None, "mbiou": None, "macc": None}
        return {"method": self.method.name, **means, "n_objects": len(results)}
