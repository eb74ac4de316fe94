"""Few-shot segmentation benchmarks in HSNet's episodic protocol: FSS-1000, COCO-20i, LVIS-92i.

An *episode* is one query image and k support images (with masks) of the same class, never the
query itself; the method learns the class from the supports and segments the query. Episodes
are drawn once, up front, from `numpy.random.default_rng(seed)`, so a run's episode list (saved
in the run folder) is the same for every method and every `shots`-independent setting.

* `FSS1000Dataset`: `root/<class>/<n>.jpg` with `<n>.png` masks (>= 128 is foreground), the
  240-class test split shipped as `persam/data/splits/fss1000_test.txt` (HSNet's; the file
  `split_file` overrides it). Queries walk through a seeded permutation of every image of the
  split (HSNet segments each of the 2400 images once: `episodes=null`); supports are k distinct
  other images of the query's class.
* `COCO20iDataset`: COCO 2014 val images and the instances JSON; the 80 categories in id order,
  fold i holds categories i, i + 4, i + 8, ... (HSNet's assignment). Each episode draws a class
  uniformly, then the query and k distinct supports among the images showing it. A class mask
  is the union of the class's annotations in the image (crowd regions included).
* `LVIS92iDataset`: LVIS v1 val JSON over COCO 2017 images (Matcher's LVIS-92i): the categories
  with more than k images, in id order, fold i holds the i-th, (i + 10)-th, ... of them (92 per
  fold); episode e draws from class e mod 92 (round robin), then the query and supports.

`data.protocol=official` (GF-SAM's and Matcher's evaluation, whose published tables these
numbers join) reads the official loaders' own files instead and draws as they do, from numpy's
legacy generator seeded `seed` once: FSS-1000 the queries in dataset order; COCO-20i HSNet's
per-fold image lists (`splits/val/fold<i>.pkl`) and class-index masks (`annotations/...png`),
1000 episodes; LVIS-92i Matcher's `lvis_val.pkl`, 2300 episodes a fold. Images are resized to
1024 x 1024 and scored at that size. `persam` keeps this project's own seeded draw.

Bad files raise `DataError` naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from persam.data.perseg import IMAGE_SUFFIXES, DataError, is_stray, read_image

log = logging.getLogger(__name__)

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
FSS1000_TEST_SPLIT = SPLITS_DIR / "fss1000_test.txt"
FG_VALUE = 128  # annotation foreground handed to the method (PerSeg's red 128, R channel)
PROTOCOLS = ("official", "persam")

# COCO's 80 categories in id order: HSNet's class index i (mask value i + 1) is the i-th.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class Episode:
    """One episode: the query and its k supports, as paths relative to the dataset root."""

    index: int
    cls: str
    query: str
    supports: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.index:04d}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("cls")
        d["supports"] = list(self.supports)
        return d


def as_annotation(mask: np.ndarray) -> np.ndarray:
    """A bool mask (H, W) as the RGB annotation the method reads (H, W, 3): R = 128 inside."""
    ann = np.zeros(mask.shape + (3,), np.uint8)
    ann[..., 0][mask] = FG_VALUE
    return ann


def _check_common(shots: int, episodes: int | None, seed: int) -> None:
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        raise DataError(
            f"data.shots={shots!r}: the number of support images per episode must be an integer "
            ">= 1 (data.shots=1 for one-shot, data.shots=5 for five-shot)."
        )
    if episodes is not None and (not isinstance(episodes, int) or episodes < 1):
        raise DataError(f"data.episodes={episodes!r}: use a positive integer (default 1000).")
    if not isinstance(seed, int):
        raise DataError(f"data.seed={seed!r}: use an integer.")


class FewShotDataset:
    """Base of the episodic datasets: the fold's classes, their images, the episode list.

    Subclasses fill `self.classes` (the fold's class names, all counted in mIoU) and
    `self.images` (class -> image paths relative to `root`, sorted) and implement
    `read_mask(rel_path, cls) -> bool (H, W)`.
    """

    benchmark = "fewshot"

    #: The protocols this benchmark implements (`data.protocol`).
    protocols: tuple[str, ...] = ("persam",)

    def __init__(
        self,
        root,
        shots: int = 1,
        episodes: int | None = 1000,
        seed: int = 0,
        protocol: str = "persam",
        episodes_file: str | None = None,
        image_size: int | None = 1024,
    ):
        _check_common(shots, episodes, seed)
        protocol = getattr(protocol, "value", protocol)
        if protocol not in PROTOCOLS:
            raise DataError(
                f"data.protocol={protocol!r}: use official (the official loader's episodes, "
                "images at 1024 x 1024) or persam (this project's seeded draw)."
            )
        if protocol not in self.protocols:
            raise DataError(
                f"data.protocol={protocol} is not implemented for {self.benchmark}: its official "
                "loader draws from per-fold image lists it ships as pickles, which this loader "
                "does not read. Use data.protocol=persam."
            )
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise DataError(f"data.image_size={image_size!r}: use a positive integer or null.")
        self.protocol = protocol
        self.episodes_file = Path(episodes_file).expanduser() if episodes_file else None
        # official: images resized to image_size x image_size (PIL bilinear), masks 'nearest'
        self.image_size = image_size if protocol == "official" else None
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} is not a folder. Point data.root at the dataset."
            )
        self.shots = shots
        self.n_episodes = episodes
        self.seed = seed
        self.classes: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.fold: int | None = None

    # -- files -------------------------------------------------------------------------------
    def read_image(self, rel: str) -> np.ndarray:
        path = self.root / rel
        if self.protocol == "official":  # PIL, convert('RGB'), as the official loaders
            return read_image_pil(path)
        if not path.is_file():
            raise DataError(
                f"Image not found: {path}. Check data.root (the {self.benchmark} folder"
                f"{', and data.images' if self.benchmark == 'coco20i' else ''}): the image "
                "must lie there."
            )
        return read_image(path)

    def read_mask(self, rel: str, cls: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, rel: str, cls: str) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) RGB and its class mask (H, W) bool; refuses a size mismatch."""
        image = self.read_image(rel)
        mask = self.read_mask(rel, cls)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"The mask of {self.root / rel} is {mask.shape[1]}x{mask.shape[0]} but the image "
                f"is {image.shape[1]}x{image.shape[0]} (width x height). Fix the mask's size."
            )
        if self.image_size is not None:
            image, mask = resize_official(image, mask, self.image_size)
        return image, mask

    # -- episodes ----------------------------------------------------------------------------
    def _check_class_sizes(self, where: str) -> None:
        small = {c: len(self.images.get(c, [])) for c in self.classes}
        small = {c: n for c, n in small.items() if n < self.shots + 1}
        if small:
            listed = ", ".join(f"{c} ({n})" for c, n in list(small.items())[:10])
            raise DataError(
                f"{len(small)} class(es) of {where} have fewer than data.shots + 1 = "
                f"{self.shots + 1} images (a query and {self.shots} other supports): {listed}. "
                f"Lower data.shots, or leave those classes out of the split."
            )

    def _supports(self, rng: np.random.Generator, cls: str, query: str) -> tuple[str, ...]:
        others = [p for p in self.images[cls] if p != query]
        picked = rng.choice(len(others), size=self.shots, replace=False)
        return tuple(others[int(i)] for i in picked)

    def _draw(self, rng: np.random.Generator, index: int) -> Episode:  # pragma: no cover
        raise NotImplementedError

    def _count(self) -> int:
        return 1000 if self.n_episodes is None else self.n_episodes

    def episodes(self) -> list[Episode]:
        """The episode list: deterministic given (root contents, fold, shots, episodes, seed);
        `episodes_file`: the list saved there."""
        if self.episodes_file is not None:
            return self.replay()
        return self.draw()

    def draw(self) -> list[Episode]:
        rng = np.random.default_rng(self.seed)
        return [self._draw(rng, i) for i in range(self._count())]

    def replay(self) -> list[Episode]:
        """The episodes of `episodes_file` (a run folder's `episodes.json`, or any JSON with an
        `episodes` list of {class, query, supports}), in its order; `data.episodes` keeps the
        first ones. Their classes must be this dataset's and their files must exist."""
        path = self.episodes_file
        if not path.is_file():
            raise DataError(
                f"data.episodes_file={path} not found. Give the episodes.json of an earlier run "
                "folder, or data.episodes_file=null to draw the episodes."
            )
        try:
            items = json.loads(path.read_text())
            items = items["episodes"] if isinstance(items, dict) else items
            out = [
                Episode(i, str(e["class"]), str(e["query"]), tuple(str(s) for s in e["supports"]))
                for i, e in enumerate(items)
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"data.episodes_file={path} is not an episode list ({exc!r}): it must be the "
                "episodes.json a run folder holds (episodes: [{class, query, supports}, ...])."
            ) from exc
        if self.n_episodes is not None:
            out = out[: self.n_episodes]
        unknown = sorted({e.cls for e in out} - set(self.classes))
        if unknown:
            raise DataError(
                f"data.episodes_file={path} has episodes of classes this dataset does not hold "
                f"({unknown[:10]}): replay it with the data settings of the run that wrote it."
            )
        for e in out:
            for rel in (e.query, *e.supports):
                if not (self.root / rel).is_file():
                    raise DataError(
                        f"data.episodes_file={path}: episode {e.name} names {self.root / rel}, "
                        "which does not exist. Check data.root."
                    )
        shots = {len(e.supports) for e in out}
        if shots and shots != {self.shots}:
            raise DataError(
                f"data.episodes_file={path} has {sorted(shots)} support(s) per episode but "
                f"data.shots={self.shots}: set data.shots to match."
            )
        return out

    def describe(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "root": str(self.root),
            "fold": self.fold,
            "shots": self.shots,
            "seed": self.seed,
            "protocol": self.protocol,
            "image_size": self.image_size,
            "episodes_file": None if self.episodes_file is None else str(self.episodes_file),
            "classes": list(self.classes),
        }

    def __len__(self) -> int:
        return len(self.episodes()) if self.episodes_file is not None else self._count()


def resize_official(
    image: np.ndarray, mask: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The official loaders' transform: the image to size x size by PIL bilinear (torchvision's
    `Resize` on a PIL image), the mask by PyTorch's legacy 'nearest' (source index
    floor(dst * in / out))."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    if mask.shape != (size, size):
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        mask = F.interpolate(m, (size, size), mode="nearest")[0, 0].numpy() > 0
    return image, mask


def read_image_pil(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) decoded by PIL, `convert('RGB')`, as the official loaders."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"Image not found: {path}. Check data.root: the image must lie there.")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"Cannot read image {path} ({exc}): corrupt or not an image.") from exc


# ----------------------------------------------------------------------------------- FSS-1000


def read_split_file(path: Path) -> list[str]:
    """Class names, one a line (blank lines and surrounding spaces ignored)."""
    if not path.is_file():
        raise DataError(
            f"data.split_file={path} not found. Give a text file with one class folder name a "
            "line, or data.split_file=null for the standard 240-class test split."
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"data.split_file={path} lists no class. Put one class name a line.")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"data.split_file={path} lists {dup} more than once; keep one of each.")
    return names


class FSS1000Dataset(FewShotDataset):
    """FSS-1000: `root/<class>/<n>.jpg` and `<n>.png` (the masks, >= 128 is foreground).

    Args:
      root: the folder of class folders.
      split_file: one class name a line; None: the standard 240-class test split.
      shots, episodes, seed: k, the number of episodes (None: every image once as the query,
        as HSNet), the seed of the draw.
      protocol: `official` (HSNet's loader, as GF-SAM / Matcher evaluate: the queries in
        dataset order, each support `<k>.jpg` with k from numpy's legacy generator seeded
        `seed`, redrawn while it is the query; images read by PIL and resized to `image_size`)
        or `persam` (the seeded permutation of the queries and k distinct other supports).
      episodes_file: replay the episodes of a run folder's `episodes.json` instead.
      image_size: the official protocol's square working size (1024); the masks are scored and
        written at that size.
    """

    benchmark = "fss1000"
    protocols = ("official", "persam")

    def __init__(
        self,
        root,
        split_file: str | None = None,
        shots: int = 1,
        episodes: int | None = 1000,
        seed: int = 0,
        protocol: str = "persam",
        episodes_file: str | None = None,
        image_size: int | None = 1024,
    ):
        super().__init__(
            root,
            shots=shots,
            episodes=episodes,
            seed=seed,
            protocol=protocol,
            episodes_file=episodes_file,
            image_size=image_size,
        )
        self.split_file = Path(split_file).expanduser() if split_file else FSS1000_TEST_SPLIT
        classes = sorted(read_split_file(self.split_file))
        missing = [c for c in classes if not (self.root / c).is_dir()]
        if missing:
            raise DataError(
                f"{len(missing)} class(es) of {self.split_file} have no folder in {self.root}: "
                f"{missing[:10]}. Fix data.root (the folder holding <class>/<n>.jpg) or "
                "data.split_file."
            )
        self.skipped: list[str] = []
        for cls in classes:
            files = []
            for path in sorted((self.root / cls).iterdir()):
                if is_stray(path) or path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
                    msg = (
                        f"skipped stray file {path} (not an image or mask of the class); delete "
                        "it to silence this warning"
                    )
                    log.warning(msg)
                    self.skipped.append(msg)
                    continue
                if path.suffix.lower() == ".png":
                    continue  # the masks
                mask = path.with_suffix(".png")
                if not mask.is_file():
                    raise DataError(
                        f"Mask not found: {mask} (the mask of {path}). Every image needs a "
                        "<n>.png mask beside it (foreground >= 128), or remove the image."
                    )
                files.append(f"{cls}/{path.name}")
            self.images[cls] = files
        self.classes = classes
        self._check_class_sizes(str(self.split_file))

    def read_mask(self, rel: str, cls: str) -> np.ndarray:
        path = (self.root / rel).with_suffix(".png")
        if not path.is_file():
            raise DataError(f"Mask not found: {path}. Put the image's <n>.png mask beside it.")
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DataError(f"Cannot read mask {path}: corrupt or not an image. Replace it.")
        return mask >= 128

    def _count(self) -> int:
        n = sum(len(v) for v in self.images.values())
        return n if self.n_episodes is None else self.n_episodes

    def draw(self) -> list[Episode]:
        if self.protocol == "official":
            return self._official()
        rng = np.random.default_rng(self.seed)
        queries = [(c, p) for c in self.classes for p in self.images[c]]
        order: list[int] = []
        out = []
        for i in range(self._count()):
            if not order:  # a new pass over every image, in a new order
                order = rng.permutation(len(queries)).tolist()[::-1]
            cls, query = queries[order.pop()]
            out.append(Episode(i, cls, query, self._supports(rng, cls, query)))
        return out

    def describe(self) -> dict:
        return {**super().describe(), "split_file": str(self.split_file)}

    def _official(self) -> list[Episode]:
        """HSNet's `DatasetFSS` (test split), as GF-SAM and Matcher evaluate FSS-1000.

        The queries are every `.jpg` of the classes, classes sorted, files in string order (1,
        10, 2, ...), in that order (`episodes` keeps the first ones; more wrap around). Each
        support is `<k>.jpg` of the query's class, k = `choice(range(1, n + 1), 1,
        replace=False)[0]` of numpy's legacy generator seeded `seed` once before the first
        episode (n = the class's image count: FSS-1000's 10), redrawn while it names the query;
        supports are not de-duplicated."""
        rng = np.random.RandomState(self.seed)
        queries = [(c, p) for c in self.classes for p in self.images[c]]
        by_stem: dict[str, dict[str, str]] = {}
        for cls in self.classes:
            stems = {p.rsplit("/", 1)[-1].rsplit(".", 1)[0]: p for p in self.images[cls]}
            n = len(stems)
            if set(stems) != {str(k) for k in range(1, n + 1)}:
                raise DataError(
                    f"The official FSS-1000 draw names supports <k>.jpg, k = 1..{n}, but class "
                    f"{cls} holds {sorted(stems)[:12]}. Rename its images 1.jpg ... {n}.jpg, or "
                    "use data.protocol=persam."
                )
            by_stem[cls] = stems
        out = []
        for i in range(self._count()):
            cls, query = queries[i % len(queries)]
            # choice(range(1, n + 1)) and choice of the n paths by k draw the same k
            by_k = [by_stem[cls][str(k)] for k in range(1, len(by_stem[cls]) + 1)]
            out.append(Episode(i, cls, query, official_supports(rng, by_k, query, self.shots)))
        return out


def official_supports(
    rng: np.random.RandomState, candidates: list[str], query: str, shots: int
) -> tuple[str, ...]:
    """The official loaders' support loop: `choice(candidates, 1, replace=False)[0]` until
    `shots` are drawn, a draw equal to the query discarded; supports are not de-duplicated.
    The caller guarantees a candidate other than the query (the loop never ends otherwise)."""
    supports: list[str] = []
    while True:
        support = str(candidates[int(rng.choice(len(candidates), 1, replace=False)[0])])
        if support != query:
            supports.append(support)
        if len(supports) == shots:
            return tuple(supports)


def read_pickle(path: Path, what: str, kind: type = dict):
    """An official loader's pickled list (`kind`), refused with the file and the fix."""
    import pickle

    if not path.is_file():
        raise DataError(
            f"{path} not found: data.protocol=official reads {what}. Point data.root at the "
            "official layout (docs/fewshot.md), or use data.protocol=persam."
        )
    try:
        with path.open("rb") as f:
            value = pickle.load(f)  # the official loaders' own file format
    except Exception as exc:  # noqa: BLE001 - any unpickling error: a corrupt file
        raise DataError(f"Cannot read {path} ({exc!r}): download {what} again.") from exc
    if not isinstance(value, kind):
        raise DataError(
            f"{path} holds a {type(value).__name__}, not the {kind.__name__} of {what}: "
            "download it again."
        )
    return value


# ------------------------------------------------------------------------ COCO-style JSONs


def _field(obj: dict, key: str, where: str, path: Path, kind=None):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(
            f"{path}: {where} has no '{key}' field. The file must be a COCO-format instances "
            "JSON (images, annotations, categories); download the official file again."
        )
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        raise DataError(
            f"{path}: {where} field '{key}' should be {getattr(kind, '__name__', kind)}, got "
            f"{type(value).__name__}. Download the official file again."
        )
    return value


class _CocoIndex:
    """The parts of a COCO-format JSON the benchmarks use, validated with clear errors."""

    def __init__(self, path: Path, image_path):
        if not path.is_file():
            raise DataError(
                f"Annotation file not found: {path}. Download it (see experiments/fewshot/"
                "README.md) or set data.annotations to its path (relative to data.root)."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"Cannot parse {path} as JSON ({exc}). The file is truncated or not JSON: "
                "download it again."
            ) from exc
        for key in ("images", "annotations", "categories"):
            _field(data, key, "the top level", path, list)
        self.path = path
        self.categories = sorted(
            (
                int(_field(c, "id", f"categories[{i}]", path, int)),
                str(_field(c, "name", f"categories[{i}]", path, str)),
            )
            for i, c in enumerate(data["categories"])
        )
        self.images: dict[int, dict] = {}
        for i, im in enumerate(data["images"]):
            iid = _field(im, "id", f"images[{i}]", path, int)
            _field(im, "height", f"images[{i}]", path, int)
            _field(im, "width", f"images[{i}]", path, int)
            self.images[iid] = {**im, "rel": image_path(im, i, path)}
        cat_ids = {c for c, _ in self.categories}
        self.by_cat_image: dict[int, dict[int, list]] = {c: {} for c in cat_ids}
        for i, ann in enumerate(data["annotations"]):
            where = f"annotations[{i}]"
            iid = _field(ann, "image_id", where, path, int)
            cid = _field(ann, "category_id", where, path, int)
            seg = _field(ann, "segmentation", where, path, (list, dict))
            if iid not in self.images:
                raise DataError(
                    f"{path}: {where} refers to image_id {iid}, which is not in 'images'. "
                    "The file is inconsistent: download it again."
                )
            if cid not in cat_ids:
                raise DataError(
                    f"{path}: {where} refers to category_id {cid}, which is not in 'categories'."
                )
            self.by_cat_image[cid].setdefault(iid, []).append(seg)

    def mask(self, image_id: int, cat_id: int) -> np.ndarray:
        """Union of the category's segmentations (polygons or RLE) in the image -> bool (H, W)."""
        from pycocotools import mask as mask_utils

        im = self.images[image_id]
        h, w = im["height"], im["width"]
        out = np.zeros((h, w), bool)
        for seg in self.by_cat_image[cat_id].get(image_id, []):
            try:
                if isinstance(seg, list):  # polygons
                    polys = [p for p in seg if len(p) >= 6]
                    if not polys:
                        continue
                    rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:
                    rle = seg
                out |= mask_utils.decode(rle).astype(bool)
            except (TypeError, ValueError, KeyError) as exc:
                raise DataError(
                    f"{self.path}: a segmentation of category {cat_id} in image {image_id} "
                    f"cannot be decoded ({exc}). Download the annotation file again."
                ) from exc
        return out


def _coco_image_path(folder: str):
    def rel(im: dict, i: int, path: Path) -> str:
        return f"{folder}/{_field(im, 'file_name', f'images[{i}]', path, str)}"

    return rel


def _lvis_image_path(im: dict, i: int, path: Path) -> str:
    """LVIS v1 names its COCO 2017 image by URL: .../<train2017|val2017>/<file>."""
    if "coco_url" in im:
        parts = str(im["coco_url"]).rstrip("/").split("/")
        return f"{parts[-2]}/{parts[-1]}"
    return _coco_image_path("val2017")(im, i, path)


class _CocoStyleDataset(FewShotDataset):
    n_folds = 4

    def __init__(self, root, annotations, fold, shots, episodes, seed, image_path, **protocol):
        super().__init__(root, shots=shots, episodes=episodes, seed=seed, **protocol)
        if not isinstance(fold, int) or not 0 <= fold < self.n_folds:
            raise DataError(
                f"data.fold={fold!r} is out of range: {self.benchmark} has folds 0 to "
                f"{self.n_folds - 1}."
            )
        self.fold = fold
        self.annotations = self.root / annotations
        # official: the official loader's own files (read by the subclass), not the JSON
        self.index = (
            None if self.protocol == "official" else _CocoIndex(self.annotations, image_path)
        )

    def draw(self) -> list[Episode]:
        if self.protocol == "official":
            rng = np.random.RandomState(self.seed)
            return [self._official(rng, i) for i in range(self._count())]
        return super().draw()

    def _official(self, rng: np.random.RandomState, index: int) -> Episode:  # pragma: no cover
        raise NotImplementedError

    def _official_episode(self, rng: np.random.RandomState, index: int, cls: str) -> Episode:
        """Episode `index` of class `cls`: the query, then the supports, each `choice(names, 1,
        replace=False)[0]` over the class's list in the official file's order."""
        names = self.images[cls]
        query = str(names[int(rng.choice(len(names), 1, replace=False)[0])])
        return Episode(index, cls, query, official_supports(rng, names, query, self.shots))

    def _assign(self, eligible: list[tuple[int, str]]) -> None:
        """Fold i: the i-th, (i + n_folds)-th, ... of the `eligible` (id, name) categories."""
        per_fold = len(eligible) // self.n_folds
        if per_fold == 0:
            raise DataError(
                f"{self.annotations} has {len(eligible)} usable categories, fewer than the "
                f"{self.n_folds} folds of {self.benchmark}. Is it the right annotation file?"
            )
        chosen = [eligible[self.fold + self.n_folds * v] for v in range(per_fold)]
        self.cat_of = {name: cid for cid, name in chosen}
        self.classes = [name for _, name in chosen]
        for name, cid in self.cat_of.items():
            ids = sorted(self.index.by_cat_image[cid])
            self.images[name] = [self.index.images[i]["rel"] for i in ids]
        self.image_id = {
            (name, self.index.images[i]["rel"]): i
            for name, cid in self.cat_of.items()
            for i in self.index.by_cat_image[cid]
        }

    def read_mask(self, rel: str, cls: str) -> np.ndarray:
        return self.index.mask(self.image_id[(cls, rel)], self.cat_of[cls])

    def describe(self) -> dict:
        if self.protocol == "official":  # the official loader's files, not the JSON
            return super().describe()
        return {**super().describe(), "annotations": str(self.annotations)}


class COCO20iDataset(_CocoStyleDataset):
    """COCO-20i: COCO 2014 val (`root/<images>/<file_name>`, `root/<annotations>`), 4 folds.

    Args:
      root: the COCO folder; annotations: the instances JSON relative to it; images: the image
        folder relative to it; fold: 0-3; shots, episodes, seed: as for every benchmark.
      protocol: `persam` (the JSON; each episode draws a class, a query and k distinct other
        supports from `default_rng(seed)`) or `official` (HSNet's `DatasetCOCO`, as Matcher and
        GF-SAM evaluate: root is HSNet's COCO2014 folder, `splits/val/fold<fold>.pkl` (class
        index -> image names, in the pickle's order), `annotations/<name>.png` (pixel = class
        index + 1), the images at `root/<name>`; per episode `choice` of the class, the query
        and the supports from numpy's legacy generator seeded `seed`; images at 1024 x 1024).
    """

    benchmark = "coco20i"
    n_folds = 4
    protocols = ("official", "persam")

    def __init__(
        self,
        root,
        annotations: str = "annotations/instances_val2014.json",
        images: str = "val2014",
        fold: int = 0,
        shots: int = 1,
        episodes: int | None = 1000,
        seed: int = 0,
        protocol: str = "persam",
        episodes_file: str | None = None,
        image_size: int | None = 1024,
    ):
        super().__init__(
            root,
            annotations,
            fold,
            shots,
            episodes,
            seed,
            _coco_image_path(images),
            protocol=protocol,
            episodes_file=episodes_file,
            image_size=image_size,
        )
        if self.protocol == "official":
            self._read_official_lists()
            return
        cats = self.index.categories
        if len(cats) != 80:
            warnings.warn(
                f"{self.annotations} has {len(cats)} categories, not COCO's 80: the folds are "
                "not COCO-20i's",
                stacklevel=2,
            )
        self._assign(cats)
        self._check_class_sizes(f"fold {fold} of {self.annotations}")

    def _draw(self, rng: np.random.Generator, index: int) -> Episode:
        cls = self.classes[int(rng.integers(len(self.classes)))]
        query = self.images[cls][int(rng.integers(len(self.images[cls])))]
        return Episode(index, cls, query, self._supports(rng, cls, query))

    # -- official (HSNet's DatasetCOCO) ----------------------------------------------------------
    def _read_official_lists(self) -> None:
        path = self.root / "splits" / "val" / f"fold{self.fold}.pkl"
        lists = read_pickle(path, f"HSNet's COCO-20i image lists of fold {self.fold}")
        self.class_index = {}
        for i in (self.fold + self.n_folds * v for v in range(len(COCO_CLASSES) // self.n_folds)):
            names = lists.get(i)
            if not isinstance(names, list) or len({str(n) for n in names}) < 2:
                raise DataError(
                    f"{path} has {'no' if names is None else 'fewer than 2'} image(s) of class "
                    f"{i} ({COCO_CLASSES[i]}): an episode needs a query and another support. "
                    "Download HSNet's split files again."
                )
            cls = COCO_CLASSES[i]
            self.class_index[cls] = i
            self.classes.append(cls)
            self.images[cls] = [str(n) for n in names]  # the pickle's order: the draw uses it

    def _official(self, rng: np.random.RandomState, index: int) -> Episode:
        ids = [self.class_index[c] for c in self.classes]
        cls = COCO_CLASSES[int(rng.choice(ids, 1, replace=False)[0])]
        return self._official_episode(rng, index, cls)

    def read_mask(self, rel: str, cls: str) -> np.ndarray:
        if self.protocol != "official":
            return super().read_mask(rel, cls)
        from PIL import Image

        if ".jpg" not in rel:
            raise DataError(f"{rel}: HSNet's COCO lists name .jpg images; check the split file.")
        path = self.root / "annotations" / (rel[: rel.index(".jpg")] + ".png")
        if not path.is_file():
            raise DataError(
                f"Mask not found: {path}. data.protocol=official reads HSNet's class-index masks "
                "(root/annotations/<image>.png); put them there or use data.protocol=persam."
            )
        try:
            with Image.open(path) as im:
                return np.asarray(im) == self.class_index[cls] + 1
        except OSError as exc:
            raise DataError(f"Cannot read mask {path} ({exc}): replace it.") from exc


class LVIS92iDataset(_CocoStyleDataset):
    """LVIS-92i: the LVIS v1 val JSON over COCO 2017 images (`root/<split>2017/<file>`).

    Args:
      root: the folder holding train2017/, val2017/ and the annotations; annotations: the LVIS
        v1 val JSON relative to it; fold: 0-9; shots, episodes, seed: as for every benchmark
        (Matcher's protocol runs 2300 episodes a fold: `episodes=null` under `official`).
      protocol: `persam` (the JSON, `default_rng(seed)`) or `official` (Matcher's `DatasetLVIS`,
        as Matcher and GF-SAM evaluate: root is Matcher's LVIS folder, `lvis_val.pkl` (category
        -> {image name: {annotations}}, the pickle's order), the images at `root/coco/<name>`;
        the categories with more than `shots` images, fold i every 10th from i; episode e the
        class e mod n, the query and supports by `choice` from numpy's legacy generator seeded
        `seed`; a mask the union of the annotations' polygons / RLEs; images at 1024 x 1024).
        The classes are named by their LVIS category id.
    """

    benchmark = "lvis92i"
    n_folds = 10
    protocols = ("official", "persam")

    def __init__(
        self,
        root,
        annotations: str = "annotations/lvis_v1_val.json",
        fold: int = 0,
        shots: int = 1,
        episodes: int | None = 1000,
        seed: int = 0,
        protocol: str = "persam",
        episodes_file: str | None = None,
        image_size: int | None = 1024,
    ):
        super().__init__(
            root,
            annotations,
            fold,
            shots,
            episodes,
            seed,
            _lvis_image_path,
            protocol=protocol,
            episodes_file=episodes_file,
            image_size=image_size,
        )
        if self.protocol == "official":
            self._read_official_lists()
            return
        eligible = [
            (cid, name)
            for cid, name in self.index.categories
            if len(self.index.by_cat_image[cid]) > shots
        ]
        self._assign(eligible)

    def _draw(self, rng: np.random.Generator, index: int) -> Episode:
        cls = self.classes[index % len(self.classes)]
        query = self.images[cls][int(rng.integers(len(self.images[cls])))]
        return Episode(index, cls, query, self._supports(rng, cls, query))

    # -- official (Matcher's DatasetLVIS) -------------------------------------------------------
    def _count(self) -> int:
        if self.protocol == "official" and self.n_episodes is None:
            return 2300  # Matcher's episodes a fold
        return super()._count()

    def _read_official_lists(self) -> None:
        path = self.root / "lvis_val.pkl"
        anno = read_pickle(path, "Matcher's LVIS-92i annotations (lvis_val.pkl)")
        eligible = [c for c in anno if isinstance(anno[c], dict) and len(anno[c]) > self.shots]
        per_fold = len(eligible) // self.n_folds
        if per_fold == 0:
            raise DataError(
                f"{path} has {len(eligible)} categories with more than data.shots={self.shots} "
                f"images, fewer than the {self.n_folds} folds: is it Matcher's lvis_val.pkl?"
            )
        self.official = {}
        for cid in (eligible[self.fold + self.n_folds * v] for v in range(per_fold)):
            cls = str(cid)
            self.classes.append(cls)
            self.official[cls] = anno[cid]
            self.images[cls] = [f"coco/{name}" for name in anno[cid]]  # the pickle's order

    def _official(self, rng: np.random.RandomState, index: int) -> Episode:
        return self._official_episode(rng, index, self.classes[index % len(self.classes)])

    def read_mask(self, rel: str, cls: str) -> np.ndarray:
        if self.protocol != "official":
            return super().read_mask(rel, cls)
        from PIL import Image
        from pycocotools import mask as mask_utils

        with Image.open(self.root / rel) as im:
            width, height = im.size
        info = self.official[cls].get(rel.removeprefix("coco/"))
        segms = [] if not isinstance(info, dict) else info.get("annotations") or []
        out = np.zeros((height, width), bool)
        for ann in segms:
            seg = ann.get("segmentation") if isinstance(ann, dict) else None
            try:
                if isinstance(seg, list):  # polygons (detectron2's polygons_to_bitmask)
                    if seg:
                        rles = mask_utils.frPyObjects([np.asarray(p) for p in seg], height, width)
                        out |= mask_utils.decode(mask_utils.merge(rles)).astype(bool)
                elif isinstance(seg, dict):  # COCO RLE
                    out |= mask_utils.decode(seg).astype(bool)
                else:
                    raise TypeError(f"segmentation of type {type(seg).__name__}")
            except (TypeError, ValueError, KeyError) as exc:
                raise DataError(
                    f"{self.root / 'lvis_val.pkl'}: an annotation of category {cls} in {rel} "
                    f"cannot be decoded ({exc}). Download Matcher's file again."
                ) from exc
        return out
