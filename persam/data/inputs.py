"""What the Python API accepts as an image or a mask, read as the command line reads files.

Images (`as_image`): a path (read as `persam.run` reads it: cv2, BGR -> RGB), a PIL image, or an
(H, W, 3) uint8 RGB array (returned as it is). Other arrays are the same picture in another
form and are converted exactly, or refused naming the accepted forms: (H, W) grey and
(H, W, 4) RGBA read as cv2 reads such a file (grey replicated, alpha dropped), uint16 as cv2
reduces 16 bits to 8, floats in [0, 1] or [0, 255] only when they hold whole 8-bit values.
A BGR array cannot be told from an RGB one: convert it first (`image[..., ::-1]`).

Masks (`as_annotation`): a path (read exactly as the command line reads an annotation,
`persam.data.perseg.read_annotation`), a PIL image, or an array: (H, W) bool or integers
(palette indices, 0/1, 0/255: non-zero = foreground), or (H, W, 3|4) by the annotation rule
(any non-zero colour channel; the alpha channel only when every colour is 0). Every form of one
mask gives PerSeg's own reading of it (red 128 on black), so its masks equal the command line's
on the PerSeg annotation file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from persam.data.perseg import DataError, annotation_of, read_annotation, read_image

IMAGE_FORMS = (
    "a path, a PIL image, or an (H, W, 3) uint8 RGB array (also: (H, W) grey, (H, W, 4) RGBA, "
    "uint16, or floats holding whole 8-bit values in [0, 1] or [0, 255])"
)
MASK_FORMS = (
    "a path, a PIL image, an (H, W) array (bool or integers, non-zero = foreground), or an "
    "(H, W, 3|4) array (any non-zero colour channel = foreground)"
)


def _is_path(x: Any) -> bool:
    return isinstance(x, str | Path)


def _pil_array(image: Any) -> np.ndarray | None:
    """A PIL image's pixels as numpy (palette images as their indices); None if not PIL."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    if not isinstance(image, Image.Image):
        return None
    return np.asarray(image)


def as_image(image: Any) -> np.ndarray:
    """An image in any accepted form -> (H, W, 3) uint8 RGB, as the command line reads it."""
    if _is_path(image):
        return read_image(Path(image))
    pil = _pil_array(image)
    if pil is not None:
        if image.mode not in ("RGB", "L", "RGBA", "I;16", "I;16B", "I;16L"):
            return np.asarray(image.convert("RGB"))
        image = pil
    if not isinstance(image, np.ndarray):
        raise TypeError(f"An image is {IMAGE_FORMS}; got {type(image).__name__}.")
    a = image
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(
            f"An image array is (H, W, 3) RGB; got shape {a.shape}. Use {IMAGE_FORMS}."
        )
    a = _to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """The 8-bit values of an image array, exactly, or a ValueError naming the accepted forms."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)  # cv2's 16 -> 8 bit reading of the same file
    if a.dtype == np.bool_:
        raise ValueError(f"An image array cannot be boolean (a mask?). Use {IMAGE_FORMS}.")
    values = a.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("The image array holds NaN or infinite values.")
    lo, hi = float(values.min()), float(values.max())
    if np.issubdtype(a.dtype, np.floating) and hi <= 1.0 and lo >= 0.0:
        values = values * 255.0
    elif lo < 0 or hi > 255:
        raise ValueError(
            f"An image array of {a.dtype} must hold values in [0, 1] or [0, 255]; got "
            f"[{lo:g}, {hi:g}]. Use {IMAGE_FORMS}."
        )
    rounded = np.rint(values)
    if np.abs(values - rounded).max() > 1e-3:
        raise ValueError(
            f"An image array of {a.dtype} must hold whole 8-bit values (x / 255 or 0..255); its "
            f"values fall between them, so it is not an 8-bit picture. Convert it to uint8 first."
        )
    return rounded.astype(np.uint8)


def as_foreground(mask: Any) -> np.ndarray:
    """A mask in any accepted form except a path -> (H, W) bool foreground."""
    pil = _pil_array(mask)
    if pil is not None:
        if mask.mode in ("P", "PA"):
            return np.asarray(mask.getchannel(0) if mask.mode == "PA" else mask) != 0
        mask = pil
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"A mask is {MASK_FORMS}; got {type(mask).__name__}.")
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 2:
        if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
            raise ValueError("The mask array holds NaN or infinite values.")
        return mask != 0
    if mask.ndim == 3 and mask.shape[-1] in (2, 3, 4):
        has_alpha = mask.shape[-1] in (2, 4)
        colour = mask[..., :-1] if has_alpha else mask
        fg = (colour != 0).any(axis=-1)
        if has_alpha and not fg.any():
            fg = mask[..., -1] != 0
        return fg
    raise ValueError(f"A mask is {MASK_FORMS}; got an array of shape {mask.shape}.")


def as_annotation(mask: Any, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A reference mask in any accepted form -> (H, W, 3) uint8, as the tasks pass it to
    `PerSAM.learn_annotations`. A path is read exactly as the command line reads it."""
    if _is_path(mask):
        return read_annotation(Path(mask), image_shape, reference=True)
    fg = as_foreground(mask)
    if image_shape is not None and fg.shape != tuple(image_shape[:2]):
        raise DataError(
            f"The mask is {fg.shape[1]}x{fg.shape[0]} but its image is {image_shape[1]}x"
            f"{image_shape[0]} (width x height): give the mask of this image."
        )
    return annotation_of(fg)
