"""Paper section 3.1 — target embedding and positive-negative location prior.

Shapes: C = SAM's embedding dim (256), h x w = the encoder grid (64 x 64), H x W = the original
image. Points are (x, y) in original-image pixels, as `segment_anything` expects them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor


def reference_grid_values(predictor: SamPredictor, mask_rgb: np.ndarray) -> torch.Tensor:
    """The reference annotation as the official code sees it on the h x w feature grid -> (h, w).

    The RGB annotation goes through the image's own resize and `Sam.preprocess` (normalised by
    pixel mean/std, zero-padded), is bilinearly resized to the grid, and its first channel is
    kept. The predictor must hold the reference image's features (for the grid size).
    """
    resized = predictor.transform.apply_image(mask_rgb)
    tensor = torch.as_tensor(resized, device=predictor.device).permute(2, 0, 1).contiguous()[None]
    padded = predictor.model.preprocess(tensor)
    grid = predictor.features.shape[-2:]
    return F.interpolate(padded, size=grid, mode="bilinear").squeeze(0)[0]


def reference_mask_on_grid(predictor: SamPredictor, mask_rgb: np.ndarray) -> torch.Tensor:
    """The reference mask on the feature grid -> bool (h, w): `reference_grid_values` > 0."""
    return reference_grid_values(predictor, mask_rgb) > 0


def target_features(features: torch.Tensor, grid_mask: torch.Tensor) -> torch.Tensor:
    """Reference features inside the mask: features (1, C, h, w), grid_mask (h, w) -> (n, C)."""
    feats = features.squeeze(0).permute(1, 2, 0)[grid_mask]
    if feats.shape[0] == 0:
        raise ValueError("the reference mask covers no cell of the feature grid")
    return feats


def target_embedding(feats: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """Pool the target features (n, C) -> (C,): `mean` (PerSAM) or `max_mean` ((max+mean)/2, PerSAM-F)."""
    mean = feats.mean(0)
    if kind == "mean":
        return mean
    if kind == "max_mean":
        return feats.max(dim=0)[0] / 2 + mean / 2
    raise ValueError(f"unknown target pooling '{kind}': use mean or max_mean")


def pool_references(feats: list[torch.Tensor], kind: str = "mean", over: str = "pixels"):
    """Pool the target features of k references, [(n_i, C)] -> (C,) (k-shot target embedding).

    `over="pixels"`: the masked cells of all references pooled together, so a reference whose
    object covers more cells weighs more; `over="images"`: each reference pooled alone by `kind`,
    then the k embeddings averaged, so every reference weighs the same. With one reference both
    are exactly `target_embedding(feats[0], kind)`.
    """
    if over not in ("pixels", "images"):
        raise ValueError(f"unknown reference pooling '{over}': use pixels or images")
    if len(feats) == 1:
        return target_embedding(feats[0], kind)
    if over == "pixels":
        return target_embedding(torch.cat(feats, dim=0), kind)
    return torch.stack([target_embedding(f, kind) for f in feats]).mean(0)


def similarity_map(predictor: SamPredictor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of `target` (C,) with the predictor's features, at original size (H, W).

    The h x w map is upsampled x4 bilinearly (to SAM's low-res mask size) and then goes through
    `Sam.postprocess_masks`, exactly as a mask would.
    """
    target = (target / target.norm(dim=-1, keepdim=True)).unsqueeze(0)
    feats = predictor.features.squeeze(0)
    c, h, w = feats.shape
    feats = (feats / feats.norm(dim=0, keepdim=True)).reshape(c, h * w)
    sim = (target @ feats).reshape(1, 1, h, w)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    sim = predictor.model.postprocess_masks(
        sim, input_size=predictor.input_size, original_size=predictor.original_size
    )
    return sim.squeeze(0).squeeze(0)


def mask_image(mask: np.ndarray, value: int = 128) -> np.ndarray:
    """A bool/0-1 mask (H, W) as the RGB annotation the official code feeds the grid: (H, W, 3)
    uint8 with channel 0 = mask * `value` (PerSeg's red 128; the video scripts' `exp` = 215)."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[..., 0] = mask.astype(np.uint8) * np.uint8(value)
    return out


def select_points(sim: torch.Tensor, negative: bool = True, positive: bool = True, topk: int = 1):
    """Arg-max (label 1) and arg-min (label 0) of the similarity map (H, W).

    `topk` > 1 takes the k highest locations as positive points, in descending order (the
    official video scripts: 2 for PerSAM, 1 for PerSAM-F).
    Returns (coords (N, 2) int64 as (x, y), labels (N,) int64); N = topk * positive + negative.
    Ties resolve as `torch.topk` does, like the official code.
    """
    width = sim.shape[1]
    coords, labels = [], []
    flat = sim.flatten()
    if positive:
        for idx in flat.topk(topk)[1].tolist():
            coords.append((idx % width, idx // width))
            labels.append(1)
    if negative:
        idx = int(flat.topk(1, largest=False)[1])
        coords.append((idx % width, idx // width))
        labels.append(0)
    return np.array(coords, dtype=np.int64).reshape(-1, 2), np.array(labels, dtype=np.int64)


def suppress(sim: torch.Tensor, region: np.ndarray | torch.Tensor, fill: float) -> torch.Tensor:
    """The similarity map (H, W) with `region` (H, W) bool set to `fill` -> (H, W), a copy.

    Used to look for the next instance: the pixels of the instances found so far get the map's
    minimum, so the next arg-max lies outside them and the attention guidance ignores them.
    """
    region = torch.as_tensor(region, device=sim.device, dtype=torch.bool)
    return sim.masked_fill(region, fill)


def peak_region(shape: tuple[int, int], point: tuple[int, int], radius: int) -> np.ndarray:
    """A disc of `radius` pixels around `point` (x, y) in an (H, W) image -> bool (H, W).

    Suppressed together with each found mask so that a prompt whose mask is empty (or misses
    its own peak) cannot be chosen again.
    """
    h, w = shape
    ys, xs = np.ogrid[:h, :w]
    x, y = point
    return (xs - x) ** 2 + (ys - y) ** 2 <= radius**2


# -- the location prior on other features (`features=dinov2`; docs/features.md) -------------------


def mask_on_feature_grid(mask_rgb: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """The reference annotation (H, W, 3) (foreground R > 0) on a features' grid (gh, gw) that
    covers the whole image (DINOv2's square resize) -> bool (gh, gw): a cell is in the mask when
    any pixel of its image region is (adaptive max pooling, whose regions overlap by a pixel at
    their edges; no object falls between cells)."""
    fg = torch.as_tensor(np.ascontiguousarray(mask_rgb[..., 0] > 0), dtype=torch.float)
    return F.adaptive_max_pool2d(fg[None, None], grid)[0, 0] > 0


def token_similarity(tokens: torch.Tensor, grid: tuple[int, int], target: torch.Tensor):
    """Cosine similarity of `target` (C,) with the tokens (gh*gw, C) -> (gh, gw)."""
    target = target / target.norm(dim=-1, keepdim=True)
    feats = tokens / tokens.norm(dim=-1, keepdim=True)
    return (feats @ target.to(feats.dtype)).reshape(*grid)


def feature_similarity_map(
    tokens: torch.Tensor, grid: tuple[int, int], target: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The similarity map of `target` on a features' grid carried to the original image frame
    (H, W) = `size`: the grid covers the whole image (square resize), so cell (i, j) is the
    image region [i H/gh, (i+1) H/gh) x [j W/gw, (j+1) W/gw) and the map is upsampled bilinearly
    (align_corners=False) straight to (H, W). Points taken on it are original pixels, which
    SAM's prompt encoder maps to its own frame (longest-side resize and padding)."""
    sim = token_similarity(tokens, grid, target)
    return F.interpolate(sim[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def attention_map_in_sam_frame(sim: torch.Tensor, predictor: SamPredictor) -> torch.Tensor:
    """PerSAM's attention guidance from a similarity map in the original frame (H, W), placed
    in SAM's frame first: standardised over the image (mean, std), resized to SAM's input size
    (longest side = the encoder's size), padded bottom/right with the standardised minimum
    (SAM's zero padding is no object), resized bilinearly to the encoder grid, sigmoid
    -> (1, 1, 1, h*w)."""
    m = (sim - sim.mean()) / torch.std(sim).clamp_min(1e-6)
    ih, iw = predictor.input_size
    size = predictor.model.image_encoder.img_size
    m = F.interpolate(m[None, None], size=(ih, iw), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, size - iw, 0, size - ih), value=float(m.min()))
    grid = tuple(predictor.features.shape[-2:])
    return F.interpolate(m, size=grid, mode="bilinear").sigmoid().unsqueeze(1).flatten(3)
