"""Files a video run writes: indexed label PNGs (the DAVIS submission layout) and overlays.

Annotations/<seq>/<frame>.png   uint8 object ids, indexed with the input's palette
overlays/<seq>.gif              frames with the objects tinted in their palette colours and
                                the prompt points (white-ringed dots in the object's colour)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from persam.data.files import replacing


def write_label_png(path: Path, labels: np.ndarray, palette: list[int]) -> None:
    """(H, W) uint8 ids -> indexed PNG with `palette` (768 ints), written atomically."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(palette)
    with replacing(path) as tmp:
        img.save(tmp, format="PNG")


def overlay_frame(
    image: np.ndarray,
    labels: np.ndarray,
    palette: list[int],
    points: dict[int, np.ndarray] | None = None,
    max_side: int = 400,
) -> np.ndarray:
    """RGB (h, w, 3) uint8: `image` (H, W, 3) with each object tinted, points drawn, downscaled
    so that its long side is at most `max_side`."""
    colours = np.array(palette[:768], dtype=np.float32).reshape(256, 3)
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = out[fg] * 0.45 + colours[labels[fg]] * 0.55
    out = out.astype(np.uint8)
    radius = max(3, round(0.01 * max(image.shape[:2])))
    for obj, coords in (points or {}).items():
        colour = tuple(int(c) for c in colours[obj % 256])
        for x, y in np.asarray(coords).reshape(-1, 2).tolist():
            cv2.circle(out, (int(x), int(y)), radius + 2, (255, 255, 255), -1)
            cv2.circle(out, (int(x), int(y)), radius, colour, -1)
    scale = max_side / max(out.shape[:2])
    if scale < 1:
        size = (max(1, round(out.shape[1] * scale)), max(1, round(out.shape[0] * scale)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
    return out


def write_gif(path: Path, frames: list[np.ndarray], fps: float = 8.0) -> None:
    """Animated GIF of RGB frames (all of one size), looping, written atomically."""
    if not frames:
        return
    # Fast octree quantisation to 256 colours (PIL's default for GIF is many times slower).
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    with replacing(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(1000 / fps),
            loop=0,
        )
