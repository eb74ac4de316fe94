"""PerSeg-layout datasets: `root/Images/<object>/NN.jpg` and `root/Annotations/<object>/NN.png`.

The reference image of each object is `reference` (default `00`); every image of the object,
the reference included, is segmented, and metrics skip the reference. Bad files raise
`DataError` with the file and the fix; stray files (`.DS_Store`, `Thumbs.db`, ...) are skipped
with a warning.

Annotations are PNGs (`.png` in any letter case): 8- or 16-bit grayscale, RGB(A) or palette;
the foreground is any non-zero value (palette index, channel). The official code reads the red
channel of an 8-bit decode; where that reading differs, the file is named in a warning. EXIF
orientation tags are refused, applied or ignored (`data.exif`) for images and masks alike.
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


# EXIF orientation tag values -> what the stored pixels need to be shown upright.
EXIF_ORIENTATION = {
    2: "mirrored",
    3: "rotated 180 degrees",
    4: "flipped upside down",
    5: "mirrored and rotated 90 degrees",
    6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 270 degrees",
    8: "rotated 90 degrees counter-clockwise",
}
EXIF_MODES = ("error", "apply", "ignore")
# A reference mask value the official code sees as foreground on the feature grid: the mask is
# normalised by SAM's pixel mean (red 123.675) before the `> 0` test.
OFFICIAL_VISIBLE = 124
# PerSeg's own masks: RGB (128, 0, 0) on the object. A mask the official code would misread is
# given to the method in this form, so it gives the results of the same mask saved as PerSeg's.
PERSEG_FOREGROUND = (128, 0, 0)


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1 = stored upright, or no tag)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the decoder instead
        return 1


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels (H, W, ...) stored with EXIF `orientation`, turned as a viewer shows them."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.rot90(a, k=-1)[:, ::-1],
        8: lambda a: np.rot90(a, k=1),
    }
    if orientation not in ops:
        return array
    return np.ascontiguousarray(ops[orientation](array))


def _exif_mode(exif) -> str:
    exif = str(getattr(exif, "value", exif))
    if exif not in EXIF_MODES:
        raise DataError(f"data.exif must be one of {', '.join(EXIF_MODES)}, got {exif!r}.")
    return exif


def check_orientation(path: Path, exif: str = "error") -> int:
    """The orientation to apply to `path` (1 = none); refuses a tagged file under `error`."""
    mode = _exif_mode(exif)
    orientation = exif_orientation(path)
    if orientation == 1 or mode == "ignore":
        return 1
    if mode == "error":
        raise DataError(
            f"{path} has an EXIF orientation tag ({orientation}: the stored pixels are shown "
            f"{EXIF_ORIENTATION.get(orientation, 'transformed')} by viewers), so it is unclear "
            f"which way its mask was drawn. Set data.exif=apply to turn the images and masks as "
            f"the tag says, or data.exif=ignore to use the stored pixels of both (or re-save the "
            f"image without the tag)."
        )
    return orientation


def read_image(path: Path, exif: str = "error") -> np.ndarray:
    """RGB uint8 (H, W, 3), decoded as the official code does (cv2, BGR -> RGB).

    An EXIF orientation tag is refused (`exif="error"`), applied or ignored (`data.exif`).
    """
    if not path.is_file():
        raise DataError(
            f"Image not found: {path}. Put the image there or remove the object folder."
        )
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DataError(
            f"Cannot read image {path}: the file is corrupt or not an image. Replace or delete it."
        )
    image = orient(image, check_orientation(path, exif))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_mask(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(foreground (H, W) bool, the official reading (H, W, 3) RGB uint8, format) of a mask.

    Foreground = any non-zero palette index, or any non-zero colour channel at full bit depth
    (8 or 16 bit, grey or RGB). The alpha channel counts only when every colour value is 0.
    The official reading is cv2's 8-bit colour decode, whose red channel the official code uses.
    """
    from PIL import Image

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    official = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is None or official is None:
        raise DataError(
            f"Cannot read annotation {path}: the file is corrupt or not an image. Replace it "
            f"with a PNG mask (foreground = any non-zero pixel)."
        )
    official = cv2.cvtColor(official, cv2.COLOR_BGR2RGB)
    with Image.open(path) as im:
        mode = im.mode
        if mode in ("P", "PA"):
            indices = np.asarray(im.getchannel(0) if mode == "PA" else im)
            return indices != 0, official, "palette"
    bits = 16 if raw.dtype == np.uint16 else 8
    if raw.ndim == 2:
        return raw != 0, official, f"{bits}-bit grayscale"
    colour, alpha = (raw[..., :-1], raw[..., -1]) if raw.shape[-1] in (2, 4) else (raw, None)
    fg = (colour != 0).any(axis=-1)
    kind = f"{bits}-bit {'RGBA' if alpha is not None else 'RGB'}"
    if alpha is not None and not fg.any():
        fg = alpha != 0
    return fg, official, kind


def read_annotation(
    path: Path,
    image_shape: tuple[int, ...] | None = None,
    *,
    exif: str = "error",
    image_path: Path | None = None,
    reference: bool = False,
    warnings: list[str] | None = None,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) annotation whose non-zero pixels are the foreground.

    Where the official code (8-bit decode, red channel) sees the same mask, its reading is
    returned unchanged (so results match the official ones); otherwise the foreground in
    PerSeg's own form (red 128), with a warning naming the file appended to `warnings`. EXIF
    orientation: the mask is turned as its image is (`exif="apply"`, the image's tag at
    `image_path`, or the mask's own), left as stored (`ignore`), or a tag is refused (`error`).
    A reference mask that is empty raises `DataError`. Raises `DataError` if missing or not
    the image's size.
    """
    if not path.is_file():
        raise DataError(
            f"Annotation not found: {path}. Every reference image needs a mask PNG with the same "
            f"name under Annotations/<object>/ (foreground = any non-zero pixel)."
        )
    fg, official, kind = _decode_mask(path)
    orientation = check_orientation(path, exif)
    if orientation == 1 and image_path is not None:
        orientation = check_orientation(image_path, exif)
    fg, official = orient(fg, orientation), orient(official, orientation)
    notes = warnings if warnings is not None else []
    if image_shape is not None and fg.shape != tuple(image_shape[:2]):
        hint = ""
        if image_path is not None and exif_orientation(image_path) != 1:
            hint = (
                f" {image_path} has an EXIF orientation tag: data.exif=apply or "
                f"data.exif=ignore may be what pairs them."
            )
        raise DataError(
            f"Annotation {path} is {fg.shape[1]}x{fg.shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]} (width x height). Resize the mask to the image "
            f"(nearest-neighbour) or fix the pairing.{hint}"
        )
    if reference and not fg.any():
        raise DataError(
            f"Reference annotation {path} is empty: no non-zero pixel ({kind}). Draw the object "
            f"in it, or choose another reference image (data.reference=NN)."
        )
    red = official[..., 0]
    seen = red > 0
    faint = reference and bool((seen & (red < OFFICIAL_VISIBLE)).any())
    if np.array_equal(seen, fg) and not faint:
        return official
    if not np.array_equal(seen, fg):
        msg = (
            f"annotation {path} ({kind}): {int(fg.sum())} foreground pixels (any non-zero "
            f"value), but the official code, which reads the red channel of an 8-bit decode, "
            f"sees {int(seen.sum())}; using {int(fg.sum())}. Re-save the mask as 0/255 8-bit to "
            f"silence this."
        )
    else:
        msg = (
            f"reference annotation {path} ({kind}): foreground values below "
            f"{OFFICIAL_VISIBLE} (e.g. a 0/1 mask), which the official code loses on the "
            f"feature grid; read as foreground. Re-save the mask as 0/255 to silence this."
        )
    log.warning(msg)
    notes.append(msg)
    return annotation_of(fg)


def annotation_of(fg: np.ndarray) -> np.ndarray:
    """PerSeg's own form of a foreground (H, W) bool: (H, W, 3) uint8, red 128 on black."""
    out = np.zeros((*fg.shape, 3), np.uint8)
    out[fg] = PERSEG_FOREGROUND
    return out


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
    exif: str = "error"  # data.exif: error | apply | ignore
    # `data.reference=all`: every annotated image serves as the reference in turn.
    all_references: bool = False
    shots: int = 1  # reference images learned from together (k-shot, `data.shots`)

    def shot_stems(self) -> list[str]:
        """The k stems learned from together: `reference`, then the k - 1 after it by name."""
        self.reference_image  # noqa: B018 - raises the clear error when the reference is absent
        stems = list(self.images)
        start = stems.index(self.reference)
        ordered = stems[start:] + stems[:start]
        if len(ordered) < self.shots:
            raise DataError(
                f"Object '{self.name}' has {len(ordered)} image(s): data.shots={self.shots} "
                f"needs {self.shots} reference images. Lower data.shots or add images."
            )
        # With no image left to score, the object gets n_images 0 and a warning (as at k = 1).
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

    def read_image(self, stem: str) -> np.ndarray:
        """RGB uint8 (H, W, 3) of image `stem`, oriented as `exif` says."""
        return read_image(self.images[stem], exif=self.exif)

    def read_annotation(self, stem: str, image_shape: tuple[int, ...]) -> np.ndarray:
        """RGB uint8 (H, W, 3) annotation of `stem` (see `read_annotation`); warnings kept."""
        return read_annotation(
            self.annotations[stem],
            image_shape,
            exif=self.exif,
            image_path=self.images.get(stem),
            reference=stem == self.reference,
            warnings=self.warnings,
        )


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
      exif: an image with an EXIF orientation tag is refused (`error`, naming the file), or
        the tag is applied to the image and its masks alike (`apply`) or ignored (`ignore`).
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
        exif: str = "error",
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
        self.exif = _exif_mode(exif)
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
        # masks: `<stem>.png` in any letter case (`00.PNG`)
        ann_dir = self.annotations_dir / name
        found = {}
        if ann_dir.is_dir():
            for path in sorted(ann_dir.iterdir()):
                if path.suffix.lower() == ".png" and path.is_file() and not is_stray(path):
                    if path.stem in found:
                        raise DataError(
                            f"Two annotations named {path.stem} in {ann_dir} "
                            f"({found[path.stem].name}, {path.name}); keep one."
                        )
                    found[path.stem] = path
        annotations = {stem: found.get(stem, ann_dir / f"{stem}.png") for stem in images}
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
                exif=self.exif,
            )
        return ObjectSet(
            name, self.reference, images, annotations, warnings, shots=self.shots, exif=self.exif
        )
