"""DAVIS-2017-layout video datasets.

    root/JPEGImages/<resolution>/<seq>/00000.jpg ...
    root/Annotations/<resolution>/<seq>/00000.png ...   indexed ('P') PNGs, 0 = background,
                                                         k = object k, 255 = void
    root/ImageSets/2017/<split>.txt                      one sequence name a line

Frames are read as the official scripts read them (PIL, RGB). The first frame's annotation
defines the objects (its non-zero labels). Bad input raises `DataError` naming the file and the
fix, for that sequence only; `VideoSequence.check()` finds it before any work is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from persam.data.perseg import DataError, is_stray

log = logging.getLogger(__name__)

DAVIS_URL = "https://davischallenge.org/davis2017/code.html"


def davis_palette() -> list[int]:
    """The DAVIS (= PASCAL VOC) palette, 256 x RGB flattened: 0 black, 1 (128, 0, 0), ..."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_label_map(path: Path) -> tuple[np.ndarray, list[int]]:
    """An annotation PNG -> (labels (H, W) uint8, palette (768 ints)).

    Indexed PNGs give their indices and palette. RGB annotations are mapped through the DAVIS
    palette when every colour is one of its entries; otherwise `DataError` says how to convert.
    Greyscale ('L') PNGs are taken as label values.
    """
    if not path.is_file():
        raise DataError(f"Annotation not found: {path}.")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to the user
        raise DataError(f"Cannot read annotation {path}: {exc}. Replace the file.") from exc
    if img.mode == "P":
        palette = img.getpalette() or davis_palette()
        palette = (palette + [0] * 768)[:768]
        return np.array(img, dtype=np.uint8), palette
    if img.mode in ("L", "I", "I;16"):
        labels = np.array(img)
        if labels.max(initial=0) > 255:
            raise DataError(f"Annotation {path} has labels above 255; DAVIS labels are 0..255.")
        return labels.astype(np.uint8), davis_palette()
    rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    palette = np.array(davis_palette(), dtype=np.int64).reshape(256, 3)
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    colours, inverse = np.unique(code, return_inverse=True)
    lookup = {int(c): i for i, c in enumerate(table)}
    unknown = [int(c) for c in colours if int(c) not in lookup]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        raise DataError(
            f"Annotation {path} is an {img.mode} image, not an indexed ('P') PNG, and has colours "
            f"that are not in the DAVIS palette ({shown}). Save it as an indexed PNG whose pixel "
            f"values are the object ids, e.g. PIL: Image.fromarray(ids.astype('uint8'), 'P') "
            f"with putpalette(...), or draw the objects in the DAVIS palette colours."
        )
    labels = np.array([lookup[int(c)] for c in colours], dtype=np.uint8)[inverse]
    log.warning(
        "Annotation %s is %s, not indexed: mapped through the DAVIS palette", path, img.mode
    )
    return labels.reshape(rgb.shape[:2]), davis_palette()


def read_frame(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), read as the official scripts do (PIL)."""
    if not path.is_file():
        raise DataError(f"Frame not found: {path}.")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"Cannot read frame {path}: {exc}. Replace the file.") from exc


@dataclass
class VideoSequence:
    """One video: its frames (sorted by number) and the annotations that exist."""

    name: str
    frames: list[Path]
    frame_dir: Path
    annotation_dir: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    @cached_property
    def annotation_files(self) -> dict[str, Path]:
        """The annotation PNGs by frame stem, the extension in any letter case (`00000.PNG`)."""
        found: dict[str, Path] = {}
        if self.annotation_dir.is_dir():
            for path in sorted(self.annotation_dir.iterdir()):
                if path.suffix.lower() != ".png" or is_stray(path) or not path.is_file():
                    continue
                if path.stem in found:
                    raise DataError(
                        f"Sequence '{self.name}': two annotations of frame {path.stem} in "
                        f"{self.annotation_dir} ({found[path.stem].name}, {path.name}); keep one."
                    )
                found[path.stem] = path
        return found

    def annotation_path(self, index: int) -> Path:
        stem = self.frames[index].stem
        return self.annotation_files.get(stem, self.annotation_dir / f"{stem}.png")

    def frame(self, index: int) -> np.ndarray:
        return read_frame(self.frames[index])

    def annotation(self, index: int) -> np.ndarray | None:
        """Labels (H, W) of frame `index`, or None where it has no annotation."""
        path = self.annotation_path(index)
        return read_label_map(path)[0] if path.is_file() else None

    @cached_property
    def first(self) -> tuple[np.ndarray, list[int]]:
        """Frame 0's labels and palette."""
        path = self.annotation_path(0)
        if not path.is_file():
            raise DataError(
                f"Sequence '{self.name}': the first frame's annotation {path} is missing. "
                "Semi-supervised VOS starts from it: add the mask of every object in frame 0 "
                "(indexed PNG, object k = value k)."
            )
        return read_label_map(path)

    # Over 80 lines: every check of a sequence's files, each with its own message naming the
    # file and the fix (issue 23); they run in the order a user would fix them.
    def check(self) -> None:
        """Raise `DataError` for what would make the sequence wrong: no frames, gaps in the
        numbering, frames of different sizes, no first annotation or no object in it, an
        annotation of another size, an object id that is not in frame 0."""
        if not self.frames:
            raise DataError(
                f"Sequence '{self.name}' is empty: no .jpg frame in {self.frame_dir}. Add its "
                "frames or remove it from the split file (or data.sequences)."
            )
        by_stem: dict[str, list[Path]] = {}
        for path in self.frames:
            by_stem.setdefault(path.stem, []).append(path)
        twice = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
        if twice:
            stem, paths = next(iter(twice.items()))
            stray = [p for p in paths if p.suffix.lower() not in (".jpg", ".jpeg")] or paths[1:]
            raise DataError(
                f"Sequence '{self.name}': frame {stem} is given twice in {self.frame_dir} "
                f"({', '.join(p.name for p in paths)}). Remove the stray file {stray[0]} (DAVIS "
                "frames are <n>.jpg; annotations go in Annotations/, not beside the frames)."
            )
        numbers = [int(s) if s.isdigit() else None for s in self.stems]
        if None in numbers:
            bad_path = self.frames[numbers.index(None)]
            raise DataError(
                f"Sequence '{self.name}': frame file {bad_path} is not numbered; DAVIS frames "
                "are named 00000.jpg, 00001.jpg, ... Rename it, or remove it if it is a stray file."
            )
        expected = list(range(numbers[0], numbers[0] + len(numbers)))
        if numbers != expected or numbers[0] != 0:
            missing = sorted(set(range(0, numbers[-1] + 1)) - set(numbers))
            raise DataError(
                f"Sequence '{self.name}': gaps in the frame numbering of "
                f"{self.frames[0].parent} (missing {', '.join(f'{m:05d}' for m in missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}). Restore the missing frames or renumber "
                "the frames (and annotations) consecutively from 00000."
            )
        sizes = {}
        for path in self.frames:
            try:
                with Image.open(path) as img:
                    sizes.setdefault(img.size, path)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"Cannot read frame {path}: {exc}. Replace the file.") from exc
        if len(sizes) > 1:
            (s0, p0), (s1, p1) = list(sizes.items())[:2]
            raise DataError(
                f"Sequence '{self.name}': frames of different sizes ({p0.name} is {s0[0]}x{s0[1]}, "
                f"{p1.name} is {s1[0]}x{s1[1]}). Resize every frame (and annotation) to one size."
            )
        width, height = next(iter(sizes))
        labels, _ = self.first
        ids = [int(v) for v in np.unique(labels) if v not in (0, 255)]
        if not ids and (labels == 255).any():
            raise DataError(
                f"Sequence '{self.name}': the first frame's annotation {self.annotation_path(0)} "
                "has only the value 255 besides background, and 255 is the void label in DAVIS "
                "(ignored, not an object). Write object k as pixel value k: for one object "
                "0 = background and 1 = the object, e.g. "
                "Image.fromarray((mask == 255).astype('uint8'), 'P') (and the same in every "
                "annotation of the sequence)."
            )
        if not ids:
            raise DataError(
                f"Sequence '{self.name}': the first frame's annotation {self.annotation_path(0)} "
                "has no object (all background). Annotate the objects to track in frame 0."
            )
        missing_ids = sorted(set(range(1, max(ids) + 1)) - set(ids))
        if missing_ids:
            raise DataError(
                f"Sequence '{self.name}': object id(s) {missing_ids} have no pixel in the first "
                f"frame's annotation {self.annotation_path(0)} (ids there: {ids}). Every object "
                "must appear in frame 0: relabel the objects 1..n or add the missing masks."
            )
        for index in range(len(self.frames)):
            path = self.annotation_path(index)
            if not path.is_file():
                continue
            with Image.open(path) as img:
                if img.size != (width, height):
                    raise DataError(
                        f"Annotation {path} is {img.size[0]}x{img.size[1]} but the frames are "
                        f"{width}x{height}. Resize it (nearest neighbour) to the frame size."
                    )
            if index:
                later = [int(v) for v in np.unique(read_label_map(path)[0]) if v not in (0, 255)]
                extra = sorted(set(later) - set(ids))
                if extra:
                    raise DataError(
                        f"Annotation {path} has object id(s) {extra} that have no pixel in the "
                        f"first frame ({self.annotation_path(0)}). Semi-supervised VOS tracks the "
                        "objects of frame 0 only: add them to frame 0 or remove them."
                    )


class DavisDataset:
    """The sequences of `root/ImageSets/<year>/<split>.txt` (or `sequences`), in that order."""

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resolution: str = "480p",
        sequences: list[str] | None = None,
        year: str = "2017",
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.resolution = resolution
        if not self.root.is_dir():
            raise DataError(
                f"DAVIS root not found: {self.root}. Download DAVIS 2017 (TrainVal, 480p) from "
                f"{DAVIS_URL} and pass data.root=/path/to/DAVIS."
            )
        self.image_dir = self.root / "JPEGImages" / resolution
        self.annotation_dir = self.root / "Annotations" / resolution
        split_file = self.root / "ImageSets" / year / f"{split}.txt"
        if sequences:
            self.names = [str(s) for s in sequences]
        else:
            if not split_file.is_file():
                raise DataError(
                    f"Split file not found: {split_file}. Pass data.split=train|val (a file of "
                    f"{split_file.parent}) or list the sequences with data.sequences=[a,b]."
                )
            lines = split_file.read_text().splitlines()
            self.names = [s.strip() for s in lines if s.strip()]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"Sequence names repeat in {split_file}; list each once.")

    def __len__(self) -> int:
        return len(self.names)

    def sequence(self, name: str) -> VideoSequence:
        """The sequence `name`; `DataError` if its frame folder is missing."""
        folder = self.image_dir / name
        if not folder.is_dir():
            raise DataError(
                f"Sequence '{name}' is listed but its frames are missing: {folder} does not exist. "
                "Add the folder or remove the name from the split file (or data.sequences)."
            )
        frames, warnings = [], []
        for path in sorted(folder.iterdir()):
            if is_stray(path) or not path.is_file():
                warnings.append(f"skipped stray file {path}")
                continue
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                frames.append(path)
            else:
                warnings.append(f"skipped {path}: not a .jpg frame")
        for w in warnings:
            log.warning(w)
        return VideoSequence(name, frames, folder, self.annotation_dir / name, warnings)
