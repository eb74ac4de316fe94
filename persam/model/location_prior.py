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
