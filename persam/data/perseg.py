"""PerSeg-layout datasets: `root/Images/<object>/NN.jpg` and `root/Annotations/<object>/NN.png`.

The reference image of each object is `reference` (default `00`); every image of the object,
the reference included, is segmented, and metrics skip the reference. Bad files raise
`DataError` with the file and the fix; stray files (`.DS_Store`, `Thumbs.db`, ...) are skipped
with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STRAY_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message says what to do."""


def is_stray(path: Path) -> bool:
    """OS droppings and hidden files that are not part of the dataset."""
    return (
        path.name.lower() in STRAY_NAMES or path.name.startswith(".") or path.name.startswith("._")
    )


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), decoded as the official code does (cv2, BGR -> RGB)."""
    if not path.is_file():
        raise DataError(
            f"Image not found: {path}. Put the image there or remove the object folder."
        )
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(
            f"Cannot read image {path}: the file is corrupt or not an image. Replace or delete it."
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_annotation(path: Path, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) annotation; raises `DataError` if missing or not the image's size."""
    if not path.is_file():
        raise DataError(
            f"Annotation not found: {path}. Every reference image needs a mask PNG with the same "
            f"name under Annotations/<object>/ (foreground = any non-zero pixel)."
        )
    mask = read_image(path)
    if image_shape is not None and mask.shape[:2] != tuple(image_shape[:2]):
        raise DataError(
            f"Annotation {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]} (width x height). Resize the mask to the image "
            f"(nearest-neighbour) or fix the pairing."
        )
    return mask


def foreground(mask_rgb: np.ndarray) -> np.ndarray:
    """Ground truth as a bool (H, W): any channel > 0."""
    return (mask_rgb > 0).any(axis=-1)


@dataclass
class ObjectSet:
    """One personalised object: its reference and all images to segment."""

    name: str
    reference: str
    images: dict[str, Path]  # stem -> image path, sorted
    annotations: dict[str, Path]  # stem -> annotation path (may be missing on disk)
    warnings: list[str] = field(default_factory=list)
    # `data.reference=all`: every annotated image serves as the reference in turn.
    all_references: bool = False
    shots: int = 1  # reference images learned from together (k-shot, `data.shots`)

    def shot_stems(self) -> list[str]:
        """The k stems learned from together: `reference`, then the k - 1 after it by name."""
        self.reference_image  # noqa: B018 - raises the clear error when the reference is absent
        stems = list(self.images)
        start = stems.index(self.reference)
        ordered = stems[start:] + stems[:start]
        if len(ordered) < self.shots + 1:
            raise DataError(
                f"Object '{self.name}' has {len(ordered)} image(s): data.shots={self.shots} "
                f"needs {self.shots + 1} (k references and at least one image to score). Lower "
                "data.shots or add images."
            )
        return ordered[: self.shots]

    @property
    def references(self) -> list[str]:
        """The reference stems to run: `[reference]`, or every annotated image for `all`."""
        if not self.all_references:
            return [self.reference]
        stems = [s for s in self.images if self.annotations[s].is_file()]
        if len(stems) < 2:
            raise DataError(
                f"object '{self.name}' has {len(stems)} annotated image(s); data.reference=all "
                f"needs at least 2 (one reference and one image to score). Add images or use a "
                f"single reference (data.reference=00)."
            )
        return stems

    def with_reference(self, stem: str) -> ObjectSet:
        """This object with `stem` as its (single) reference."""
        return replace(self, reference=stem, all_references=False)

    @property
    def reference_image(self) -> Path:
        if self.reference not in self.images:
            raise DataError(
                f"Reference image {self.reference}.jpg not found for object '{self.name}' "
                f"(have: {', '.join(self.images) or 'none'}). Set data.reference to one of those."
            )
        return self.images[self.reference]

    @property
    def reference_annotation(self) -> Path:
        return self.annotations[self.reference]


class PerSegDataset:
    """Lists the objects of a PerSeg-layout folder.

    Args:
      root: folder holding `Images/` and `Annotations/`.
      reference: stem of the reference image of every object (`00`), or `all`: every annotated
        image of an object in turn.
      objects: names of the objects to use (all when None).
      shots: reference images learned from together (k-shot; 1 is the paper): `reference`
        and the k - 1 images after it in name order; metrics skip all k.
      instances_root: folder of ground-truth instance maps, `<object>/<stem>.png` (indexed PNGs);
        None: the connected components of the annotations.
      reference_perturbation / perturbation_amount: degrade the reference mask
        (`persam.data.perturb`: none, erode, dilate, shift, noise, box).
    """

    def __init__(
        self,
        root: str | Path,
        reference: str = "00",
        objects: list[str] | None = None,
        instances_root: str | Path | None = None,
        reference_perturbation: str = "none",
        perturbation_amount: float = 0.1,
        shots: int = 1,
    ):
        from persam.data.perturb import check_perturbation

        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
            raise DataError(
                f"data.shots={shots!r}: the number of reference images must be an integer >= 1 "
                "(data.shots=1 is the paper's one-shot setting)."
            )
        self.shots = shots

        self.root = Path(root).expanduser()
        self.reference = str(reference)
        self.instances_root = None if instances_root is None else Path(instances_root).expanduser()
        if self.instances_root is not None and not self.instances_root.is_dir():
            raise DataError(
                f"data.instances_root {self.instances_root} is not a folder; it must hold "
                f"<object>/<stem>.png instance maps, or leave it unset (connected components)."
            )
        check_perturbation(reference_perturbation, perturbation_amount)
        self.reference_perturbation = reference_perturbation
        self.perturbation_amount = float(perturbation_amount)
        self.images_dir = self.root / "Images"
        self.annotations_dir = self.root / "Annotations"
        if not self.images_dir.is_dir():
            raise DataError(
                f"No Images/ folder in {self.root}. data.root must hold Images/<object>/*.jpg and "
                f"Annotations/<object>/*.png (the PerSeg layout)."
            )
        available = sorted(
            p.name for p in self.images_dir.iterdir() if p.is_dir() and not is_stray(p)
        )
        if objects:
            missing = [o for o in objects if o not in available]
            if missing:
                raise DataError(
                    f"Unknown object(s) {missing} in {self.images_dir}; available: {available}."
                )
            available = [o for o in available if o in set(objects)]
        if not available:
            raise DataError(f"No object folders in {self.images_dir}.")
        self.names = available

    @property
    def task(self):
        """The runner's task for this dataset: one unit per object (`persam.evaluate`)."""
        from persam.evaluate import ObjectTask

        return ObjectTask

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        for name in self.names:
            yield self.object(name)

    def object(self, name: str) -> ObjectSet:
        folder = self.images_dir / name
        images: dict[str, Path] = {}
        warnings: list[str] = []
        for path in sorted(folder.iterdir()):
            if is_stray(path) or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                msg = f"skipped stray file {path} (not an image); delete it to silence this warning"
                log.warning(msg)
                warnings.append(msg)
                continue
            if path.stem in images:
                raise DataError(f"Two images named {path.stem} in {folder}; keep one.")
            images[path.stem] = path
        annotations = {stem: self.annotations_dir / name / f"{stem}.png" for stem in images}
        if self.reference == "all":
            reference = next(iter(images), "00")
            return ObjectSet(
                name,
                reference,
                images,
                annotations,
                warnings,
                all_references=True,
                shots=self.shots,
            )
        return ObjectSet(name, self.reference, images, annotations, warnings, shots=self.shots)
