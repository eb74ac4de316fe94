"""GF-SAM's stages on tensors, as the official code (ANDYZAQ/GF-SAM, `matcher/GFSAM.py`)
executes them: priors, cross map and negative filter, point selection, the mask-coverage graph,
cluster classification with mask growth, point consistency, selection and merge.

Shapes: K references, grid (gh, gw) of N = gh*gw feature tokens (37 x 37 for DINOv2 at 518),
S the working image size, nm points (one SAM mask each). The method (`persam.model.gf_sam`)
chains them; each stage is a plain function so that ablations and tests can call it alone.
Every arithmetic step follows the official order of operations (the golden files in
../shared/golden/gfsam compare them stage by stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COSINE_EPS = 1e-7
# The official code's empty-reference square: 14 x 14 pixels at the working image's centre.
EMPTY_SQUARE = 7


def normalize_channels(tokens: torch.Tensor) -> torch.Tensor:
    """GF-SAM's `F.normalize(feats, dim=1)` on (B, N, C) tokens: every *channel* divided by its
    L2 norm over the N tokens of the same image (not a per-token normalisation)."""
    return F.normalize(tokens, dim=1, p=2)


def pairwise_cosine(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """C[i, j] = (s_i . q_j) / (|s_i| |q_j| + 1e-7): query (1, N, C), support (N, C) ->
    (1, N_support, N_query)."""
    q = query.contiguous().permute(0, 2, 1)  # (1, C, N)
    q_norm = torch.norm(q, 2, 1, True)
    s = support.unsqueeze(0).contiguous()
    s_norm = torch.norm(s, 2, 2, True)
    return torch.bmm(s, q) / (torch.bmm(s_norm, q_norm) + COSINE_EPS)


def generate_prior(
    similarities: list[torch.Tensor], masks: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The max map and the mean map (each (1, gh, gw)), averaged over the K shots.

    similarities: K matrices (1, N, N) from `pairwise_cosine`; masks (K, 1, H, W) float weights,
    resized to the grid bilinearly with align_corners=True. Token j is at (j // gw, j % gw).
    """
    gh, gw = grid
    n = gh * gw
    maxes, means = [], []
    for st, sim in enumerate(similarities):
        w = F.interpolate(
            masks[st].unsqueeze(0), size=(gh, gw), mode="bilinear", align_corners=True
        )
        w = w.flatten(2).transpose(-1, -2)  # (1, N, 1)
        weighted = sim * w
        means.append(weighted.mean(1).view(1, 1, gh, gw) / (w.sum() / n + COSINE_EPS))
        maxes.append(weighted.max(1)[0].view(1, n).view(1, 1, gh, gw))
    return torch.cat(maxes, 1).mean(1), torch.cat(means, 1).mean(1)


@dataclass
class Priors:
    """Stages 4 and 5: the similarity maps (1, gh, gw) and the filtered map points come from."""

    neg_sim_map: torch.Tensor
    neg_mean_sim_map: torch.Tensor
    sim_map: torch.Tensor
    mean_sim_map: torch.Tensor
    mean_sim_map_half: torch.Tensor  # 0-dim
    cross_sim_map: torch.Tensor
    neg_mean_sim_map_std: torch.Tensor
    neg_region: torch.Tensor  # bool
    mean_sim_map_fil: torch.Tensor


def priors(
    query: torch.Tensor,
    supports: torch.Tensor,
    masks: torch.Tensor,
    grid: tuple[int, int],
    negative_filter: bool = True,
) -> Priors:
    """Stage 4 (priors on the background, then on the mask) and stage 5 (cross map, negative
    filter). query (1, N, C) and supports (K, N, C) channel-normalised; masks (K, 1, S, S).

    `negative_filter=False` keeps the cross map whole (no cell zeroed where the background's
    min-max normalised mean map exceeds it)."""
    sims = [pairwise_cosine(query, s) for s in supports]
    neg_sim, neg_mean = generate_prior(sims, 1 - masks, grid)
    sim, mean = generate_prior(sims, masks, grid)
    half = (mean.max() + mean.min()) / 2
    cross = mean * sim
    cross = (cross - cross.min()) / (cross.max() - cross.min() + 1e-6)
    neg_std = (neg_mean - neg_mean.min()) / (neg_mean.max() - neg_mean.min() + 1e-6)
    neg_region = neg_std > cross
    if not negative_filter:
        neg_region = torch.zeros_like(neg_region)
    return Priors(
        neg_sim, neg_mean, sim, mean, half, cross, neg_std, neg_region, cross * ~neg_region
    )


@dataclass
class Points:
    """Stage 6: the selected grid cells, column-major (sorted by x, then y)."""

    sum_sim: float
    topk: int
    hot: np.ndarray  # (gh, gw) float32, 1 at the selected cells
    cells: np.ndarray  # (nm, 2) int64 (x = column, y = row)


def find_points(filtered: torch.Tensor, max_points: int | None = 128) -> Points:
    """topk = min(int(sum of the map), max_points), at least 1 when the sum is positive; the topk
    largest cells (row-major `torch.topk`), listed column-major. `max_points=None`: no cap."""
    total = filtered.sum()
    topk = int(total) if max_points is None else min(int(total), int(max_points))
    if topk == 0 and total > 0:
        topk = 1
    flat = filtered.flatten(0)
    hot = torch.zeros_like(flat)
    hot[flat.topk(topk)[1]] = 1
    hot = hot.view(filtered.shape[-2], filtered.shape[-1]).cpu().numpy()
    return Points(float(total), topk, hot, np.argwhere(hot.T > 0))


def coverage_graph(masks: torch.Tensor, cells: np.ndarray, hot: np.ndarray) -> np.ndarray:
    """Stage 8: A[i, j] = mask i, resized to the grid with 'nearest', covers point j's cell.
    masks (nm, 1, S, S) bool -> (nm, nm) bool (rows masks, columns points)."""
    return coverage(nearest_on_grid(masks, hot.shape), cells, hot)


def nearest_on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """masks (nm, 1, H, W) bool -> (nm, gh, gw) float 0/1: `F.interpolate(mode='nearest')`
    (source index floor(i * H / gh)), read by indexing at the rows and columns that
    interpolation picks (the same values, without converting the full masks to float)."""
    rows = _nearest_sources(masks.shape[-2], grid[0])
    cols = _nearest_sources(masks.shape[-1], grid[1])
    return masks[:, 0][:, rows][:, :, cols].float()


def _nearest_sources(size: int, out: int) -> torch.Tensor:
    """The source indices PyTorch's legacy 'nearest' reads, from interpolating a ramp."""
    ramp = torch.arange(size, dtype=torch.float64).view(1, 1, size)
    return F.interpolate(ramp, size=out, mode="nearest")[0, 0].long()


def coverage(on_grid: torch.Tensor, cells: np.ndarray, hot: np.ndarray) -> np.ndarray:
    gw = hot.shape[-1]
    adjacency = (on_grid * torch.as_tensor(hot > 0, dtype=torch.float)[None]).flatten(1)
    index = torch.as_tensor(cells[:, 1] * gw + cells[:, 0], dtype=torch.long)
    return adjacency[:, index].numpy() > 0


def weak_components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Weakly connected components of a directed graph (edges either way), numbered by first
    occurrence: node 0's component is 0, the next node not yet labelled starts 1, and so on
    (scipy's `connected_components(connection='weak')` numbering)."""
    n = len(adjacency)
    linked = adjacency | adjacency.T
    labels = np.full(n, -1, dtype=np.int32)
    count = 0
    for start in range(n):
        if labels[start] >= 0:
            continue
        labels[start] = count
        stack = [start]
        while stack:
            node = stack.pop()
            for other in np.flatnonzero(linked[node] & (labels < 0)):
                labels[other] = count
                stack.append(other)
        count += 1
    return count, labels


def strong_components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Strongly connected components (numbered by first occurrence; the official code computes
    them with scipy and does not use them)."""
    n = len(adjacency)
    reach = adjacency | np.eye(n, dtype=bool)
    while True:
        nxt = reach | ((reach.astype(np.int32) @ reach.astype(np.int32)) > 0)
        if (nxt == reach).all():
            break
        reach = nxt
    return weak_components(reach & reach.T)


@dataclass
class Classification:
    """Stage 9, per point: accepted by mask growth, and the scores the official code keeps."""

    pos_region: torch.Tensor  # (gh, gw) bool
    accepted: torch.Tensor  # (nm,) int64, 1 = accepted (fgbg_labels)
    cls_scores: torch.Tensor  # (nm,) float32: pos - neg of its component's last examined mask
    mask_scores: torch.Tensor  # (nm,) float32
    growth_rank: torch.Tensor  # (nm,) int64, position in its component's descending order
    growth_pos: torch.Tensor  # (nm,) float32, pos score of the residual when examined
    growth_neg: torch.Tensor  # (nm,) float32
    component_last: torch.Tensor  # (ncomp,) float32


def bilinear_on_grid(masks: torch.Tensor, grid: tuple[int, int], chunk: int = 2) -> torch.Tensor:
    """masks (n, 1, S, S) bool -> (n, 1, gh, gw) float, bilinear, align_corners=False.

    `chunk` masks are made float at a time: a small block the allocator reuses (three times
    faster than 16 at S = 1024, whose fresh 64 MB each call pays in page faults); the batch
    changes no value."""
    out = [
        F.interpolate(masks[i : i + chunk].float(), grid, mode="bilinear", align_corners=False)
        for i in range(0, len(masks), chunk)
    ]
    return torch.cat(out) if out else torch.zeros((0, 1, *grid))


def union_on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The union of masks (n, 1, S, S) bool at full size, resized bilinearly -> (1, gh, gw)."""
    union = _union(masks).float()
    return F.interpolate(union.unsqueeze(0), grid, mode="bilinear", align_corners=False).squeeze(0)


def _union(masks: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) bool -> (1, H, W) bool: the official (sum(dim=0) > 0), as numpy's OR
    reduction over the masks' bytes read as 64-bit words (a bool is one byte, 0 or 1, so the OR
    of the words is the OR of the masks, eight pixels at a time: much faster than torch's
    reduction over the first dimension or a mask-by-mask OR)."""
    n = masks.shape[0]
    flat = masks.detach().reshape(n, -1)
    if flat.shape[1] % 8 or masks.dtype != torch.bool or flat.device.type != "cpu":
        return masks.any(dim=0)
    words = flat.contiguous().view(torch.uint8).view(torch.int64).numpy()
    union = torch.from_numpy(np.bitwise_or.reduce(words, axis=0))
    return union.view(torch.uint8).view(torch.bool).view(masks.shape[1:])


def cluster_classification(
    masks: torch.Tensor,
    labels: np.ndarray,
    n_components: int,
    positive: torch.Tensor,
    negative: torch.Tensor,
    grid: tuple[int, int],
    mask_growth: bool = True,
) -> Classification:
    """Stage 9. positive = mean_sim_map ** 2, negative = neg_mean_sim_map * half (1, gh, gw).

    Mask growth: in each component, the members' masks on the grid (bilinear) in descending
    order of their mean (positive - negative) (`torch.argsort`, not stable, as the official
    code); a mask is accepted when its part outside the accepted ones lies more on the positive
    region than off it. `mask_growth=False`: a component's members are all accepted when its
    union mask lies more on the positive region than off it, else none."""
    nm = len(labels)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    on_grid = bilinear_on_grid(masks, grid)  # (nm, 1, gh, gw)
    pos_region = (positive > negative).float()
    diff = (positive - negative).unsqueeze(0)
    accepted = torch.zeros(nm, dtype=torch.long)
    cls_scores = torch.zeros(nm, dtype=torch.float)
    mask_scores = torch.zeros(nm, dtype=torch.float)
    rank = torch.full((nm,), -1, dtype=torch.long)
    growth_pos = torch.zeros(nm, dtype=torch.float)
    growth_neg = torch.zeros(nm, dtype=torch.float)
    last = torch.zeros(n_components, dtype=torch.float)
    for component in range(n_components):
        members = torch.where(labels_t == component)[0]
        if not mask_growth:
            union = union_on_grid(masks[members], grid)
            pos = (pos_region * union).sum()
            neg = ((1 - pos_region) * union).sum()
            accepted[members] = int(pos > neg)
            cls_scores[members] = pos - neg
            last[component] = pos - neg
            continue
        resized = on_grid[members]
        scores = (resized * diff).sum(dim=(-1, -2, -3))
        scores = scores / (resized.sum(dim=(-1, -2, -3)) + 1e-6)
        mask_scores[members] = scores
        order = scores.argsort(descending=True)
        inner = torch.zeros_like(resized[0])
        for position, idx in enumerate(order):
            current = resized[idx] * (1 - inner)
            pos = (pos_region * current).sum()
            neg = ((1 - pos_region) * current).sum()
            point = members[idx]
            rank[point] = position
            growth_pos[point], growth_neg[point] = pos, neg
            if pos > neg:
                inner += current
                accepted[point] = 1
        cls_scores[members] = pos - neg
        last[component] = pos - neg
    return Classification(
        pos_region[0] > 0, accepted, cls_scores, mask_scores, rank, growth_pos, growth_neg, last
    )


@dataclass
class Consistency:
    """Stage 10 per point and per component."""

    union_similarities: torch.Tensor  # (ncomp, gh, gw)
    similarities_raw: torch.Tensor  # (ncomp, nm)
    distances: torch.Tensor  # (ncomp, nm), 0 replaced by 1
    similarities: torch.Tensor  # (ncomp, nm)
    max_args: torch.Tensor  # (nm,)
    before_vote: torch.Tensor  # (nm,) int64
    after_vote: torch.Tensor  # (nm,) int64
    selected: torch.Tensor  # (nm,) int64: 1 consistent and accepted, 2 one of the two, 0 neither


def point_consistency(
    query: torch.Tensor,
    masks: torch.Tensor,
    labels: np.ndarray,
    n_components: int,
    accepted: torch.Tensor,
    cells: np.ndarray,
    grid: tuple[int, int],
    enabled: bool = True,
    vote: bool = True,
) -> Consistency:
    """Stage 10. A point is consistent when, among the components, its own has the highest
    query self-similarity (the mean map of the component's union mask, read at the point)
    divided by the grid distance to that component's nearest point (0 -> 1); then a majority
    vote per component (fewer consistent members than not: none is). `enabled=False`: every
    point is consistent (the selection is mask growth's); `vote=False`: no vote."""
    nm = len(labels)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    cells_t = torch.as_tensor(cells, dtype=torch.long)
    self_sim = [pairwise_cosine(query, query[0])]
    maps = []
    members = [torch.where(labels_t == c)[0] for c in range(n_components)]
    for idx in members:
        union = union_on_grid(masks[idx], grid)
        maps.append(generate_prior(self_sim, union.unsqueeze(0), grid)[1])
    union_similarities = torch.cat(maps, dim=0)
    raw = union_similarities[:, cells_t[:, 1], cells_t[:, 0]]
    distance = torch.cdist(cells_t.float(), cells_t.float())
    distances = torch.zeros_like(raw)
    for c, idx in enumerate(members):
        distances[c] = distance[:, idx].min(dim=1)[0]
    distances[distances == 0] = 1
    similarities = raw / distances
    _, max_args = similarities.max(dim=0)
    before = torch.where(max_args == labels_t, 1, 0)
    if not enabled:
        before = torch.ones(nm, dtype=torch.long)
    after = before.clone()
    if vote and enabled:
        for idx in members:
            consistent = after[idx].sum()
            if consistent < len(idx) - consistent:
                after[idx] = 0
    positive = (after * accepted) > 0
    selected = ((after + accepted) > 0).long() * 2
    selected[positive] = 1
    return Consistency(
        union_similarities, raw, distances, similarities, max_args, before, after, selected
    )


@dataclass
class Merge:
    """Stage 11: the prediction (S, S) and its probability map, and the fallback if taken."""

    mask: torch.Tensor  # (S, S) bool
    prob: torch.Tensor  # (S, S) float32
    fallback: bool
    fallback_index: int | None
    fallback_scores: torch.Tensor | None


def select_and_merge(
    masks: torch.Tensor,
    selected: torch.Tensor,
    mean_sim_map: torch.Tensor,
    cls_scores: torch.Tensor,
    fallback: bool = True,
) -> Merge:
    """The OR of the masks of the points labelled 1; the probability map is the pixelwise max of
    each mask times the mean (bilinear-resized) `mean_sim_map` inside it. Fallback when that is
    empty: `cls_scores` of the points not labelled 2 zeroed (a copy; the official code zeroes
    them in place), the first maximum's mask is the prediction."""
    size = tuple(masks.shape[-2:])
    sim = F.interpolate(mean_sim_map.unsqueeze(0), size, mode="bilinear", align_corners=False)
    sim = sim.squeeze(0)
    chosen = torch.where(selected == 1)[0]
    pred = _union(masks[chosen]) if len(chosen) else torch.zeros((1, *size), dtype=torch.bool)
    prob = torch.zeros((1, *size))
    for idx in chosen.tolist():
        prob = torch.maximum(prob, _mean_inside(sim, masks[idx]))
    index, scores = None, None
    if fallback and not pred.any() and len(masks):
        scores = cls_scores.clone()
        scores[selected != 2] = 0
        index = int(scores.max(dim=0)[1])
        pred = masks[index].clone()
        prob = _mean_inside(sim, masks[index])
    return Merge(pred[0], prob[0], index is not None, index, scores)


def _mean_inside(sim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official (sim * mask).sum() / mask.sum() * mask (NaN where the mask is empty)."""
    value = (sim * mask).sum() / mask.count_nonzero()
    return torch.where(mask, value, torch.zeros((), dtype=value.dtype))
