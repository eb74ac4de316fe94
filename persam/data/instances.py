"""Ground-truth instances of an object in one image (several copies of the concept).

From `data.instances_root` when given: indexed PNGs in the Annotations layout,
`<instances_root>/<object>/<stem>.png`, 0 background and 1..K the instances (palette "P" or
grayscale PNGs, as DAVIS writes them). Otherwise the 8-connected components of the annotation.
Predicted instances are written the same way (`instances/<object>/<stem>.png`, grayscale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from persam.data.perseg import DataError
from persam.metrics.image import connected_instances

#: `instances.source` in metrics.json: where the ground-truth instances came from.
SOURCE_ROOT = "instances_root"
SOURCE_COMPONENTS = "connected_components"


def read_instances(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An indexed instance map (H, W) int32 from a palette or grayscale PNG."""
    if not path.is_file():
        raise DataError(
            f"Instance map not found: {path}. data.instances_root must hold <object>/<stem>.png "
            f"for every annotated image (indexed: 0 background, 1..K instances), or leave it "
            f"unset to use the connected components of the annotations."
        )
    try:
        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img)
    except OSError as exc:
        raise DataError(f"Cannot read instance map {path}: {exc}. Replace the file.") from exc
    if mode not in ("P", "L", "I", "I;16", "1") or arr.ndim != 2:
        raise DataError(
            f"Instance map {path} is a {mode} image; save it as an indexed (palette) or "
            f"grayscale PNG whose values are 0 (background) and 1..K (the instances)."
        )
    if shape is not None and arr.shape != tuple(shape[:2]):
        raise DataError(
            f"Instance map {path} is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]} (width x height); resize it (nearest-neighbour)."
        )
    return arr.astype(np.int32)


def write_instances(path: Path, instance_map: np.ndarray) -> None:
    """Grayscale PNG (H, W): 0 background, 1..K the instances (values, not colours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(instance_map, dtype=np.uint8), mode="L").save(path)


def ground_truth_instances(
    instances_root: Path | None, obj: str, stem: str, foreground: np.ndarray
) -> np.ndarray:
    """The ground-truth instance map of `obj`/`stem`; `foreground` (H, W) bool its annotation."""
    if instances_root is None:
        return connected_instances(foreground)
    return read_instances(Path(instances_root) / obj / f"{stem}.png", foreground.shape)
