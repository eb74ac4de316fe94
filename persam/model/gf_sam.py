"""GF-SAM (Zhang et al., "Bridge the Points: Graph-based Few-shot Segment Anything
Semantically", NeurIPS 2024), as the official code (ANDYZAQ/GF-SAM) executes it.

    references -> DINOv2 priors on the query -> cross map, negative filter -> up to 128 points
    -> one SAM mask per point -> mask-coverage graph, weak components -> mask growth per
    component -> point consistency -> OR of the selected masks (or the fallback's one mask)

The API is PerSAM's (`persam.model.method`): `learn(reference images, masks)` returns a target,
`segment(image, target)` a prediction with `.mask` and `.instances`, so the tasks (objects,
few-shot episodes, video, demo) call it alike. Like the official evaluation, references and
query are first resized to `image_size` x `image_size` (PIL bilinear; masks 'nearest'); the
prediction is made at that size and resized back to the query's ('nearest').

Every component is a switch (defaults = the official code): `negative_filter`, `max_points`,
`mask_growth`, `point_consistency`, `consistency_vote`, `fallback`, `empty_reference`.
Where the official code crashes (no point on the query) the prediction is empty, with a
warning. A `recorder` (any object with `record(name, value)`) receives every stage's values,
named as in the golden files' README (../shared/golden/gfsam).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import Sam

from persam.data.inputs import as_annotation, as_image
from persam.model import gf_sam_graph as graph
from persam.model.decoder import decode
from persam.model.encoder import Encoder
from persam.model.features import SAMFeatures
from persam.model.method import EmptyReferenceMask as _EmptyReferenceMask
from persam.model.method import references
from persam.model.options import GFSAMOptions, options_of, plain

log = logging.getLogger(__name__)

NO_POINT = (
    "GF-SAM found no point on the query (the filtered prior is all zero): the prediction is "
    "empty (the official code crashes here with UnboundLocalError)"
)


class Recorder(Protocol):
    def record(self, name: str, value: Any) -> None: ...


class EmptyReferenceMask(_EmptyReferenceMask):
    """Every reference mask is empty and `empty_reference=raise` (PerSAM's error: the tasks
    report it alike)."""


@dataclass
class GFSAMTarget:
    """The references as GF-SAM uses them, at the working size S."""

    features: torch.Tensor  # (K, N, C) channel-normalised tokens
    masks: torch.Tensor  # (K, 1, S, S) float 0/1, after the empty-reference square
    grid: tuple[int, int]
    shots: int = 1
    empty_reference: bool = False  # every mask was empty: the centre square was used
    warnings: list[str] = field(default_factory=list)
    # What the tasks read of PerSAM-F's targets: GF-SAM fits nothing.
    mask_weights: None = None
    fit: None = None


@dataclass
class GFSAMPrediction:
    """The segmentation of one query and the points, components and labels behind it."""

    mask: np.ndarray  # (H, W) bool, the query's size
    instances: list[np.ndarray]  # (H, W) bool: the accepted masks (selected, or the fallback's)
    coords: np.ndarray  # (nm, 2) int (x, y) query pixels: each point's grid-cell centre
    labels: np.ndarray  # (nm,) 1 = selected (its mask is in the prediction), else 0
    points: np.ndarray  # (nm, 2) grid cells (x, y), column-major
    components: np.ndarray  # (nm,) weak component of each point
    accepted: np.ndarray  # (nm,) 1 = accepted by mask growth
    selected: np.ndarray  # (nm,) 1 consistent and accepted, 2 one of the two, 0 neither
    working_mask: np.ndarray  # (S, S) bool, the prediction at the working size
    prob: np.ndarray  # (S, S) float32, GF-SAM's probability map
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)  # PerSAM's; unused

    def instance_map(self) -> np.ndarray:
        """The accepted masks as one indexed map (H, W) uint8, as PerSAM's multi-instance output:
        0 background, 1..K the instances in point order; a pixel belongs to the first mask that
        covers it, and a mask that adds no pixel (GF-SAM's masks overlap) is not an instance."""
        out = np.zeros(self.mask.shape, np.uint8)
        k = 0
        for inst in self.instances:
            new = inst & (out == 0)
            if new.any() and k < 255:
                k += 1
                out[new] = k
        return out


def foreground(mask: np.ndarray) -> np.ndarray:
    """A mask as bool (H, W): an annotation (H, W, 3) is foreground where R > 0 (the project's
    convention); a (H, W) array where it is non-zero."""
    mask = np.asarray(mask)
    return mask[..., 0] > 0 if mask.ndim == 3 else mask > 0


class GFSAM:
    """GF-SAM; every component is one switch (defaults: the official code).

    Args:
      sam: the frozen SAM (`build_sam`); its decoder makes one mask per point.
      encoder: SAM's image encoder with the embedding cache (default: uncached).
      trainer: unused (the runner passes every method one).
      features: the semantic features matched between references and query: a features object
        (`persam.backbones.dinov2.DINOv2Features`, `persam.model.features.SAMFeatures`), or a
        factory called with `encoder=` (the `features` config group, `_partial_`); None: SAM's
        own embedding.
      recorder: receives every stage's values (`record(name, value)`); None in production.
      **options: the fields of `GFSAMOptions` (`persam/model/options.py`, declared once, the
        defaults the official code's; `conf/method/gf_sam.yaml` types them through its schema):
      image_size: the working size S (the official evaluation's 1024).
      negative_filter: zero the cross map where the background prior's mean map (min-max
        normalised) exceeds it.
      max_points: the cap on the points (128); None: no cap.
      points_per_batch: points decoded by SAM at a time (64).
      mask_growth: accept a component's masks one by one (mask growth); false: the component's
        union decides for all its members.
      point_consistency: keep only points whose own component is the most self-similar one;
        false: every accepted point is selected.
      consistency_vote: the per-component majority vote of point consistency.
      fallback: with no point selected, take the mask of the best-scored undecided point.
      empty_reference: every reference mask empty: `square` (the official 14 x 14 centre square)
        or `raise`.
    """

    name = "gf_sam"
    #: `python -m persam.video` segments every frame anew per object, with the frame-0 object
    #: mask as the reference (`persam.tasks.video.segmenter.PerFrameSegmenter`): GF-SAM has no
    #: location prior to track with.
    video_per_frame = True

    Options = GFSAMOptions

    def __init__(
        self,
        sam: Sam,
        encoder: Encoder | None = None,
        trainer: Callable[..., Any] | None = None,
        name: str = "gf_sam",
        features: Any = None,
        recorder: Recorder | None = None,
        **options: Any,
    ) -> None:
        self.options = options_of(self.Options, options)
        for f in fields(GFSAMOptions):  # plain values for the code below
            setattr(self, f.name, plain(getattr(self.options, f.name)))
        self.name = name
        self.sam = sam
        self.encoder = encoder or Encoder(sam)
        self.trainer = trainer
        if features is None:
            features = SAMFeatures(self.encoder)
        elif not isinstance(features, SAMFeatures) and not hasattr(features, "grid"):
            features = features(encoder=self.encoder)  # a config group's partial
        self.features = features
        self.recorder = recorder

    # -- helpers -----------------------------------------------------------------------------
    def _record(self, name: str, value: Any) -> None:
        if self.recorder is not None:
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().clone()
            self.recorder.record(name, value)

    def working_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) uint8, PIL bilinear (torchvision's Resize on a PIL
        image, as the official loaders)."""
        s = self.image_size
        image = np.asarray(image)
        if image.shape[:2] == (s, s):
            return image
        return np.asarray(Image.fromarray(image).resize((s, s), Image.BILINEAR))

    def working_mask(self, mask: np.ndarray) -> torch.Tensor:
        """A mask at any size -> (1, S, S) float 0/1, PyTorch's legacy 'nearest' (source index
        floor(dst * in / out)), as the official loaders."""
        m = torch.as_tensor(foreground(mask), dtype=torch.float)[None, None]
        return F.interpolate(m, (self.image_size, self.image_size), mode="nearest")[0]

    def _tokens(self, image_s: np.ndarray, who: str) -> tuple[torch.Tensor, tuple[int, int]]:
        out = self.features(image_s)
        self._record(f"{who}_prenorm", out.tokens)
        return out.tokens.float(), tuple(out.grid)

    # -- references --------------------------------------------------------------------------
    def learn(self, image: Any, mask: Any, **options: Any) -> GFSAMTarget:
        """The target from a reference image and its mask, or lists of k of each (k-shot).

        Any form of `persam.data.inputs` (a path, a PIL image, an array; a mask as a 2-D array,
        non-zero = foreground, or (H, W, 3|4)). A mask may be given at its image's size or at
        the working size `image_size` (both are resized to it, as the official loaders do)."""
        images, masks = references(image, mask)
        images = [as_image(i) for i in images]
        masks = [foreground(as_annotation(m)) for m in masks]
        return self.learn_annotations(images, masks, **options)

    @torch.no_grad()
    def learn_annotations(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        mask_rgb: np.ndarray | Sequence[np.ndarray],
        **_: Any,
    ) -> GFSAMTarget:
        """The target from k reference images (H, W, 3) RGB uint8 and their annotations (H, W, 3)
        (foreground R > 0; the tasks' entry) or (H, W) masks. An empty mask among non-empty
        ones stays empty; all empty: the official centre square (`empty_reference`)."""
        images, masks = references(image, mask_rgb)
        masks_s = torch.stack([self.working_mask(m) for m in masks])  # (K, 1, S, S)
        self._record("support_mask_areas", masks_s.sum(dim=(1, 2, 3)).long())
        warnings = []
        empty = bool(masks_s.sum() == 0)
        if empty:
            if self.empty_reference == "raise":
                raise EmptyReferenceMask("every reference mask is empty (no foreground pixel)")
            c, r = self.image_size // 2, graph.EMPTY_SQUARE
            masks_s[..., c - r : c + r, c - r : c + r] = 1
            msg = (
                "every reference mask is empty: GF-SAM uses a 14 x 14 square at the image centre "
                "as the reference (official)"
            )
            log.warning(msg)
            warnings.append(msg)
        self._record("ref_mask_was_empty", empty)
        tokens, grid = [], None
        for img in images:
            t, grid = self._tokens(self.working_image(img), "support")
            tokens.append(t)
        feats = graph.normalize_channels(torch.stack(tokens))
        return GFSAMTarget(feats, masks_s, grid, len(images), empty, warnings)

    # -- query -------------------------------------------------------------------------------
    def _sam_masks(self, predictor, cells: np.ndarray, grid: tuple[int, int]):
        """Stage 7: one SAM mask per point through the project's decoder call, in batches of
        `points_per_batch` -> masks (nm, 1, S, S) bool, IoU predictions (nm,)."""
        coords = predictor.transform.apply_coords(cells, grid)  # SAM's input frame (float64)
        self._record("coord_xy", coords)
        ints = coords.astype(np.int32)  # the official int cast truncates
        self._record("sam_point_coords_int", ints)
        # `decode` takes original-image pixels and scales them to SAM's input frame: undo it,
        # so that SAM receives exactly the truncated coordinates.
        (h, w), (ih, iw) = predictor.original_size, predictor.input_size
        s = max(h, w) / max(ih, iw)
        original = ints.astype(np.float64) * s
        masks, scores = [], []
        for i in range(0, len(ints), self.points_per_batch):
            chunk = original[i : i + self.points_per_batch]
            out, iou, _ = decode(
                predictor,
                chunk[:, None, :],
                np.ones((len(chunk), 1), dtype=np.int64),
                multimask=False,
            )
            masks.append(torch.from_numpy(out))
            scores.append(iou[:, 0])
        if not masks:
            size = tuple(predictor.original_size)
            return torch.zeros((0, 1, *size), dtype=torch.bool), np.zeros(0, np.float32)
        return torch.cat(masks), np.concatenate(scores)

    @torch.no_grad()
    # Over 80 lines on purpose: GF-SAM's stages in the official order (priors, points, masks,
    # graph, classification, consistency, merge), each a call into gf_sam_graph plus the
    # recorder lines the golden tests read; split, the stages' shared arrays would be passed
    # through a dozen signatures.
    def segment(self, image: Any, target: GFSAMTarget) -> GFSAMPrediction:
        """Segment the references' class in `image` ((H, W, 3) RGB uint8, or any form of
        `persam.data.inputs.as_image`)."""
        image = as_image(image)
        height, width = image.shape[:2]
        s = self.image_size
        image_s = self.working_image(image)
        # The official query goes through float k/255, *255 and a truncating uint8 cast.
        sam_image = torch.from_numpy(image_s.copy()).float().div(255).mul(255).byte().numpy()
        self._record("sam_input", sam_image)
        predictor = self.encoder.set_image(sam_image)
        self._record("sam_embedding", predictor.features[0])
        tokens, grid = self._tokens(image_s, "query")
        if tuple(grid) != tuple(target.grid):
            raise ValueError(f"query grid {grid} differs from the references' {target.grid}")
        query = graph.normalize_channels(tokens[None])
        warnings = list(target.warnings)

        p = graph.priors(query, target.features, target.masks, grid, self.negative_filter)
        for name in (
            "neg_sim_map",
            "neg_mean_sim_map",
            "sim_map",
            "mean_sim_map",
            "mean_sim_map_half",
            "cross_sim_map",
            "neg_mean_sim_map_std",
            "neg_region",
            "mean_sim_map_fil",
        ):
            self._record(name, getattr(p, name))
        points = graph.find_points(p.mean_sim_map_fil, self.max_points)
        self._record("find_points_sum_sim", points.sum_sim)
        self._record("find_points_topk", points.topk)
        self._record("sim_map_hot", points.hot)
        self._record("coord_f", points.cells)
        self._record("empty_points", len(points.cells) == 0)
        nm = len(points.cells)
        if nm == 0:
            log.warning(NO_POINT)
            warnings.append(NO_POINT)
            empty = np.zeros((height, width), bool)
            self._record("pred_mask", torch.zeros((s, s), dtype=torch.bool))
            self._record("prob_mask", torch.zeros((s, s)))
            return GFSAMPrediction(
                mask=empty,
                instances=[],
                coords=np.zeros((0, 2), np.int64),
                labels=np.zeros(0, np.int64),
                points=points.cells,
                components=np.zeros(0, np.int32),
                accepted=np.zeros(0, np.int64),
                selected=np.zeros(0, np.int64),
                working_mask=np.zeros((s, s), bool),
                prob=np.zeros((s, s), np.float32),
                warnings=warnings,
            )

        masks, iou = self._sam_masks(predictor, points.cells, grid)
        self._record("sam_iou_predictions", iou)
        self._record("masks", masks[:, 0])

        on_grid = graph.nearest_on_grid(masks, grid)
        self._record("masks_37_nearest", on_grid > 0)
        adjacency = graph.coverage(on_grid, points.cells, points.hot)
        n_weak, weak = graph.weak_components(adjacency)
        self._record("adjacency", adjacency)
        self._record("components_weak", n_weak)
        self._record("labels_weak", weak)
        if self.recorder is not None:  # computed by the official code, unused by the method
            n_strong, strong = graph.strong_components(adjacency)
            self._record("components_strong", n_strong)
            self._record("labels_strong", strong)

        cls = graph.cluster_classification(
            masks,
            weak,
            n_weak,
            p.mean_sim_map * p.mean_sim_map,
            p.neg_mean_sim_map * p.mean_sim_map_half,
            grid,
            mask_growth=self.mask_growth,
        )
        self._record("pos_region", cls.pos_region)
        self._record("cc_mask_scores", cls.mask_scores)
        self._record("cc_growth_rank", cls.growth_rank)
        self._record("cc_growth_pos_score", cls.growth_pos)
        self._record("cc_growth_neg_score", cls.growth_neg)
        self._record("cc_component_last_pos_minus_neg", cls.component_last)
        self._record("fgbg_labels", cls.accepted)
        self._record("cls_scores", cls.cls_scores)

        pc = graph.point_consistency(
            query,
            masks,
            weak,
            n_weak,
            cls.accepted,
            points.cells,
            grid,
            enabled=self.point_consistency,
            vote=self.consistency_vote,
        )
        self._record("pc_union_similarities", pc.union_similarities)
        self._record("pc_coord_similarities_raw", pc.similarities_raw)
        self._record("pc_coord_distance_labels", pc.distances)
        self._record("pc_coord_similarities", pc.similarities)
        self._record("pc_max_args", pc.max_args)
        self._record("pc_selection_before_vote", pc.before_vote)
        self._record("pc_selection_after_vote", pc.after_vote)
        self._record("selected_points", pc.selected)

        merged = graph.select_and_merge(
            masks, pc.selected, p.mean_sim_map, cls.cls_scores, fallback=self.fallback
        )
        self._record("fallback", merged.fallback)
        if merged.fallback:
            self._record("fallback_index", merged.fallback_index)
            self._record("fallback_cls_scores", merged.fallback_scores)
            msg = (
                f"no point passed both mask growth and point consistency: the fallback took "
                f"point {merged.fallback_index}'s mask"
            )
            warnings.append(msg)
        self._record("pred_mask", merged.mask)
        self._record("prob_mask", merged.prob)

        chosen = (
            [merged.fallback_index]
            if merged.fallback
            else torch.where(pc.selected == 1)[0].tolist()
        )
        gh, gw = grid
        cells = points.cells
        coords = np.stack(
            [(cells[:, 0] + 0.5) * width / gw, (cells[:, 1] + 0.5) * height / gh], axis=1
        ).astype(np.int64)
        labels = np.zeros(nm, np.int64)
        labels[chosen] = 1
        return GFSAMPrediction(
            mask=self._to_query(merged.mask[None], height, width)[0],
            instances=list(self._to_query(masks[chosen, 0], height, width)),
            coords=coords,
            labels=labels,
            points=cells,
            components=weak,
            accepted=cls.accepted.numpy(),
            selected=pc.selected.numpy(),
            working_mask=merged.mask.numpy(),
            prob=merged.prob.numpy(),
            fallback=merged.fallback,
            warnings=warnings,
        )

    @staticmethod
    def _to_query(masks: torch.Tensor, height: int, width: int) -> np.ndarray:
        """(n, S, S) bool -> (n, H, W) bool, 'nearest'."""
        if masks.shape[-2:] == (height, width):
            return masks.numpy()
        if len(masks) == 0:
            return np.zeros((0, height, width), bool)
        out = F.interpolate(masks[:, None].float(), (height, width), mode="nearest")
        return out[:, 0].numpy() > 0
