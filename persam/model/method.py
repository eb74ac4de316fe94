"""The two methods of the paper, built from the component modules.

`PerSAM` (training-free, section 3.1) and `PerSAMF` (section 3.2, scale-aware fine-tuning).
Each learns a `Target` from one reference image and mask (or k of them: k-shot, the features
pooled over all references, PerSAM-F's weights fitted on all k jointly), then segments test images:

    encode (cached) -> location prior -> guided, prompted decoder -> cascaded refinement

With `instances` > 1 (or `auto`) the last three stages repeat on the same image features: the
similarity map is suppressed under each found instance and the next peak prompts again.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from persam.data.inputs import as_annotation, as_image
from persam.model import location_prior
from persam.model.decoder import decode, personalize
from persam.model.encoder import Encoder
from persam.model.guided_attention import attention_map
from persam.model.options import (
    PerSAMFOptions,
    PerSAMOptions,
    check_instances,  # noqa: F401 - re-exported: persam.model.method.check_instances
    options_of,
    plain,
)
from persam.model.refine import cascaded_refinement


class EmptyReferenceMask(ValueError):
    """The reference annotation has no foreground pixel (on the image or on the feature grid)."""


@dataclass
class Target:
    """What the reference images and masks teach: the personalised concept.

    One reference (the paper) or k (k-shot): `embedding` and `location` are pooled over all of
    them (`PerSAM.shot_pooling`); `locations` keeps each reference's own location feature.
    """

    embedding: torch.Tensor  # (C,) mean of reference features inside the mask(s)
    location: torch.Tensor  # (C,) pooled feature used for the location prior
    grid_mask: torch.Tensor  # (h, w) bool, the (first) reference mask on the feature grid
    mask_weights: np.ndarray | None = None  # (3,) PerSAM-F mixing weights
    fit: Any = None  # PerSAM-F `FitResult`
    ref_points: np.ndarray | None = None  # PerSAM-F positive point on the (first) reference
    shots: int = 1  # number of references
    locations: torch.Tensor | None = None  # (k, C) each reference's location feature (k > 1)
    # The location feature's highest cosine similarity with its own reference(s) inside the
    # mask(s): how similar a true copy of the concept looks (the `auto` instances' presence test).
    self_peak: float | None = None


@dataclass
class Prediction:
    """The segmentation of one test image and every intermediate the paper describes."""

    mask: np.ndarray  # (H, W) bool, final
    coords: np.ndarray  # (N, 2) int (x, y) in original pixels
    labels: np.ndarray  # (N,) 1 positive, 0 negative
    attn_sim: torch.Tensor | None  # (1, 1, 1, h*w) or None
    first_mask: np.ndarray  # (H, W) bool, step-0 mask (PerSAM-F: the weighted mask)
    first_logits: np.ndarray  # (1, 256, 256) low-res logits of the step-0 mask
    steps: list[tuple[np.ndarray, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Multi-instance mode: the instances' pixels (H, W) bool, disjoint, in the order found (a
    # pixel belongs to the first instance that covers it); `mask` is their union. `peaks` are
    # the similarity peaks that prompted them, relative to the first (see `PerSAM`).
    instances: list[np.ndarray] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)

    def instance_map(self) -> np.ndarray:
        """The instances as one indexed map (H, W) uint8: 0 background, 1..K the instances."""
        out = np.zeros(self.mask.shape, np.uint8)
        for k, inst in enumerate(self.instances, start=1):
            out[inst] = k
        return out


@dataclass
class _Decoded:
    """One prompt's decoder passes: final mask, step-0 mask and logits, refinement steps."""

    mask: np.ndarray
    first_mask: np.ndarray
    first_logits: np.ndarray
    steps: list[tuple[np.ndarray, int]]
    warnings: list[str]


class PerSAM:
    """Training-free PerSAM; every paper component is one switch.

    Args:
      sam: the frozen SAM backbone (`persam.build_sam`, `persam.backbones.sam.build_sam`).
      encoder: its image encoder with the embedding cache (default: an uncached `Encoder`).
      trainer: unused by PerSAM; PerSAM-F fits with it (a `lightning.Trainer` factory).
      name: the method's name in logs and results (default: the class's).
      features: the features the location prior matches with (docs/features.md): None or SAM's
        own (`persam.model.features.SAMFeatures`, the root `features=sam`): the paper, exactly;
        a features object with a `grid` (`persam.backbones.dinov2.DINOv2Features`, the root
        `features=dinov2`), or a factory called with `encoder=` (a config group's partial): the
        target feature and the similarity map from those features, the points and the attention
        map carried to SAM's frame through the original image; the semantic prompt stays SAM's
        target embedding.
      **options: the fields of `PerSAMOptions` (`persam/model/options.py`, declared once; the
        config `conf/method/persam.yaml` has the same defaults): the location prior's pooling
        and points, guided attention, semantic prompt, refinement steps, k-shot pooling and
        the instances per image.
    """

    name = "persam"

    Options = PerSAMOptions

    def __init__(
        self,
        sam: Sam,
        encoder: Encoder | None = None,
        trainer: Callable[..., Any] | None = None,
        name: str | None = None,
        features: Any = None,
        **options: Any,
    ) -> None:
        self.options = options_of(self.Options, options)
        if name is not None:
            self.name = name
        for f in fields(PerSAMOptions):  # plain values for the code below
            setattr(self, f.name, plain(getattr(self.options, f.name)))
        self.sam = sam
        self.encoder = encoder or Encoder(sam)
        self.trainer = trainer
        self.decoder = personalize(sam)
        if features is not None and not hasattr(features, "grid") and not hasattr(features, "kind"):
            features = features(encoder=self.encoder)  # a config group's partial
        if getattr(features, "kind", None) == "sam":
            features = None  # SAM's own embedding: the paper's path, unchanged
        self.features = features

    def _tokens(self, image: np.ndarray):
        """The image's tokens (gh*gw, C) float32 and grid from `features` (None without)."""
        if self.features is None:
            return None
        out = self.features(image)
        return out.tokens.float(), tuple(out.grid)

    def _similarity(self, predictor, location: torch.Tensor, tokens=None) -> torch.Tensor:
        """The similarity map (H, W) of `location` on the predictor's image: SAM's embedding,
        or the image's `tokens` carried to the original frame."""
        if tokens is None:
            return location_prior.similarity_map(predictor, location)
        return location_prior.feature_similarity_map(
            *tokens, location, tuple(predictor.original_size)
        )

    # -- reference -------------------------------------------------------------------------
    @torch.no_grad()
    def learn(self, image: Any, mask: Any, **options: Any) -> Target:
        """The target from a reference image and its mask, or lists of k of each (k-shot).

        Any form of `persam.data.inputs`: a path, a PIL image, an array; a mask as a 2-D array
        (bool or integers, non-zero = foreground) or (H, W, 3|4). Every form of one mask gives
        the command line's masks. `options`: PerSAM-F's `logger` and `name` of the fit.
        """
        images, masks = references(image, mask)
        images = [as_image(i) for i in images]
        masks = [as_annotation(m, i.shape) for m, i in zip(masks, images, strict=True)]
        return self.learn_annotations(images, masks, **options)

    def learn_annotations(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        mask_rgb: np.ndarray | Sequence[np.ndarray],
        **_: Any,
    ) -> Target:
        """Target from the reference `image` (H, W, 3) RGB and its annotation `mask_rgb` (H, W, 3)
        as `persam.data.perseg.read_annotation` returns it (the tasks' entry).

        k-shot: lists of k images and k annotations (each pair of one size); the features inside
        the k masks are pooled by `shot_pooling`. One image (or a list of one) is the paper.
        """
        images, masks = references(image, mask_rgb)
        feats, grid_masks, located = [], [], []
        for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
            # one reference: the one-shot messages; k: which reference is at fault
            which = "" if len(images) == 1 else f"reference {i + 1} of {len(images)}: "
            if not (mask[..., 0] > 0).any():
                raise EmptyReferenceMask(
                    f"{which}the mask is empty (no pixel with R channel > 0)"
                    if which
                    else "the reference mask is empty (no pixel with R channel > 0)"
                )
            predictor = self.encoder.set_image(img)
            grid_mask = location_prior.reference_mask_on_grid(predictor, mask)
            try:
                feats.append(location_prior.target_features(predictor.features, grid_mask))
            except ValueError as exc:
                raise EmptyReferenceMask(
                    f"{which}{exc}: the object is too small to be seen at the encoder's resolution"
                ) from exc
            grid_masks.append(grid_mask)
            if self.features is not None:  # the location prior's target from `features`
                tokens, grid = self._tokens(img)
                on_grid = location_prior.mask_on_feature_grid(mask, grid)
                located.append(tokens[on_grid.flatten()])
        pool = location_prior.pool_references
        located = located or feats  # SAM's own embedding: the paper
        target = Target(
            embedding=pool(feats, "mean", self.shot_pooling),
            location=pool(located, self.target_pooling, self.shot_pooling),
            grid_mask=grid_masks[0],
            shots=len(images),
        )
        unit = target.location / target.location.norm()
        target.self_peak = max(
            float((f / f.norm(dim=-1, keepdim=True) @ unit).max()) for f in located
        )
        if len(images) > 1:
            target.locations = torch.stack(
                [location_prior.target_embedding(f, self.target_pooling) for f in located]
            )
        return target

    # -- test image ------------------------------------------------------------------------
    def _locate(
        self, predictor, target: Target, negative: bool, sim=None, current=None, tokens=None
    ):
        """Points and attention guidance from the similarity map `sim` (H, W).

        `current` is `sim` with the instances found so far suppressed: the positive point and
        the attention guidance come from it, the negative point from the whole map.
        """
        if sim is None:
            sim = self._similarity(predictor, target.location, tokens)
        if current is None:
            current = sim
        pos_coords, pos_labels = location_prior.select_points(
            current, positive=self.positive_point, negative=False
        )
        neg_coords, neg_labels = location_prior.select_points(
            sim, positive=False, negative=negative
        )
        coords = np.concatenate([pos_coords, neg_coords])
        labels = np.concatenate([pos_labels, neg_labels])
        if self.shot_points == "each" and target.locations is not None and current is sim:
            # k-shot: the points of every reference (first instance; later ones: pooled)
            coords, labels = self._points_of_each(predictor, target, negative, tokens)
        attn_sim = None
        if self.guided_attention and self.features is not None:
            attn_sim = location_prior.attention_map_in_sam_frame(current, predictor)
        elif self.guided_attention:
            attn_sim = attention_map(current, tuple(predictor.features.shape[-2:]))
        return coords, labels, attn_sim

    def _points_of_each(self, predictor, target: Target, negative: bool, tokens=None):
        """k-shot `shot_points=each`: every reference's own arg-max (and arg-min), positives
        first, a point repeated by two references kept once -> coords (N, 2), labels (N,)."""
        found = [
            location_prior.select_points(
                self._similarity(predictor, loc, tokens),
                positive=self.positive_point,
                negative=negative,
            )
            for loc in target.locations
        ]
        seen, coords, labels = set(), [], []
        for want in (1, 0):
            for c, lab in found:
                for xy, label in zip(c.tolist(), lab.tolist(), strict=True):
                    if label == want and (tuple(xy), label) not in seen:
                        seen.add((tuple(xy), label))
                        coords.append(xy)
                        labels.append(label)
        return (
            np.array(coords, dtype=np.int64).reshape(-1, 2),
            np.array(labels, dtype=np.int64),
        )

    def _guidance(self, target: Target, attn_sim):
        return self.decoder.guide(
            attn_sim=attn_sim if self.guided_attention else None,
            target_embedding=target.embedding[None] if self.semantic_prompt else None,
        )

    @staticmethod
    def _prompt(coords: np.ndarray, labels: np.ndarray) -> tuple:
        """One prompt's points as `decode` takes them: (1, N, 2), (1, N), or None, None."""
        if len(coords) == 0:
            return None, None
        return coords[None], labels[None]

    def _decode(self, predictor, target: Target, coords, labels, attn_sim) -> _Decoded:
        """Step 0 (guided, single mask) and the cascaded refinement for one prompt."""
        with self._guidance(target, attn_sim):
            masks, _, low_res = decode(predictor, *self._prompt(coords, labels), multimask=False)
        mask, logits = masks[0, 0], low_res[0]
        refined = cascaded_refinement(
            predictor, coords, labels, mask, logits, steps=self.refine_steps
        )
        return _Decoded(refined.mask, mask, logits, refined.steps, refined.warnings)

    @torch.no_grad()
    def segment(self, image: Any, target: Target) -> Prediction:
        """Segment the personalised object in `image` ((H, W, 3) RGB uint8, or any form of
        `persam.data.inputs.as_image`); all its instances when `instances` is not 1 (the image
        is encoded once)."""
        image = as_image(image)
        predictor = self.encoder.set_image(image)
        tokens = self._tokens(image)
        sim = self._similarity(predictor, target.location, tokens)
        floor = float(sim.min())
        radius = max(1, math.ceil(max(sim.shape) / predictor.features.shape[-1]))
        auto = self.instances == "auto"
        limit = self.max_instances if auto else self.instances
        current, union = sim, np.zeros(tuple(sim.shape), bool)
        first: Prediction | None = None
        instances, peaks, points = [], [], []
        for k in range(limit):
            flat = int(current.flatten().topk(1)[1])
            peak = (flat % sim.shape[1], flat // sim.shape[1])
            height = float(current[peak[1], peak[0]]) - floor
            peaks.append(height)
            if k and auto and height < self.instance_threshold * peaks[0]:
                break
            if k and auto and target.self_peak is not None:
                # presence: a further copy must look like the concept on its own reference (its
                # raw similarity at least `instance_presence` x the reference's own peak); the
                # peak-over-first test alone passes the flat maps of images without the concept
                if float(current[peak[1], peak[0]]) < self.instance_presence * target.self_peak:
                    break
            coords, labels, attn_sim = self._locate(
                predictor, target, self.negative_point, sim=sim, current=current, tokens=tokens
            )
            decoded = self._decode(predictor, target, coords, labels, attn_sim)
            mask = decoded.mask
            if first is None:
                first = Prediction(
                    mask=mask,
                    coords=coords,
                    labels=labels,
                    attn_sim=attn_sim,
                    first_mask=decoded.first_mask,
                    first_logits=decoded.first_logits,
                    steps=decoded.steps,
                    warnings=list(decoded.warnings),
                )
                duplicate = False
            else:
                area = int(mask.sum())
                covered = int((mask & union).sum())
                duplicate = area == 0 or covered > self.instance_overlap * area
                if not duplicate:
                    first.warnings += [
                        f"instance {len(instances) + 1}: {w}" for w in decoded.warnings
                    ]
                    points.append(coords[labels == 1])
            if duplicate and auto:
                break
            if not duplicate and (mask & ~union).any():
                instances.append(mask & ~union)
                union |= mask
            region = mask | location_prior.peak_region(tuple(sim.shape), peak, radius)
            current = location_prior.suppress(current, region, floor)
        assert first is not None
        if limit > 1:
            first.mask = union
            first.coords = np.concatenate([first.coords, *points]) if points else first.coords
            first.labels = np.concatenate(
                [first.labels, *[np.ones(len(p), np.int64) for p in points]]
            )
        first.instances = instances
        top = peaks[0] if peaks and peaks[0] > 0 else 1.0
        first.peaks = [p / top for p in peaks]
        return first


class PerSAMF(PerSAM):
    """PerSAM-F: learn 2 weights mixing SAM's three multi-scale masks on the reference.

    Args: as `PerSAM`, with the fields of `PerSAMFOptions` (PerSAM's, the paper's PerSAM-F
      defaults, and `scale_weights`: `ScaleWeightsOptions`, the fit's steps, lr, backend, loop,
      and `load`: a `scale_weights.json` (or its run folder) whose weights are used instead of
      fitting). `trainer`: a `lightning.Trainer` factory (the `trainer` group, `_partial_`) the
      fit completes with its steps and logger when `scale_weights.loop=trainer`.
    """

    Options = PerSAMFOptions
    name = "persam_f"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale_weights = self.options.scale_weights.as_kwargs()
        load = self.scale_weights.pop("load", None)
        self.saved_weights = None
        if load:
            from persam.model.scale_weights import read_scale_weights, scale_weights_file

            self.saved_weights = read_scale_weights(load)
            self.saved_from = str(scale_weights_file(load))

    def _multiscale(self, predictor, target: Target, attn_sim, coords, labels):
        """SAM's three masks for the prompt: full-res logits (3, H, W), low-res (3, 256, 256)."""
        with self._guidance(target, attn_sim):
            high, _, low = decode(predictor, *self._prompt(coords, labels), return_logits=True)
        return high[0], low[0]

    def learn_annotations(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        mask_rgb: np.ndarray | Sequence[np.ndarray],
        logger: Any = None,
        name: str | None = None,
    ) -> Target:
        """PerSAM's target, plus the mixing weights fitted to the reference mask(s).

        k-shot: SAM's three masks are predicted on every reference (prompted by that
        reference's own location prior) and the two weights are fitted on all k at once: the
        loss is that of the k references' pixels taken together as one mask (one dice over
        all of them, the focal term averaged over all of them).
        """
        from persam.model.scale_weights import fit_scale_weights

        images, masks = references(image, mask_rgb)
        target = super().learn_annotations(images, masks)
        if self.saved_weights is not None:
            if name not in self.saved_weights:
                raise ValueError(
                    f"object '{name}' has no weights in method.scale_weights.load="
                    f"{self.saved_from} (it has: {', '.join(self.saved_weights) or 'none'})"
                )
            target.mask_weights = np.asarray(self.saved_weights[name], dtype=np.float32)
            return target
        highs, gts, points = [], [], []
        with torch.no_grad():
            for img, mask in zip(images, masks, strict=True):
                predictor = self.encoder.set_image(img)
                coords, labels, attn_sim = self._locate(
                    predictor, target, negative=False, tokens=self._tokens(img)
                )
                high, _ = self._multiscale(predictor, target, attn_sim, coords, labels)
                highs.append(torch.as_tensor(high))
                gts.append(torch.as_tensor(mask[..., 0] > 0))
                points.append(coords)
        if len(highs) == 1:
            logits, gt = highs[0], gts[0]
        else:  # the k references side by side as one (3, 1, sum of H_i W_i) image
            logits = torch.cat([h.reshape(3, 1, -1) for h in highs], dim=2)
            gt = torch.cat([g.reshape(1, -1) for g in gts], dim=1)
        fit = fit_scale_weights(
            logits,
            gt,
            logger=logger,
            trainer=self.trainer,
            log_name=f"fit/{name}/loss" if name else "fit/loss",
            **self.scale_weights,
        )
        target.fit = fit
        target.mask_weights = np.asarray(fit.weights, dtype=np.float32)
        target.ref_points = points[0]
        return target

    def _decode(self, predictor, target: Target, coords, labels, attn_sim) -> _Decoded:
        """The weighted multi-scale mask, then the cascaded refinement, for one prompt."""
        high, low = self._multiscale(predictor, target, attn_sim, coords, labels)
        from persam.model.scale_weights import mix_masks

        mixed_high = mix_masks(torch.as_tensor(high), target.mask_weights)
        mask = (mixed_high > self.sam.mask_threshold).numpy()
        mixed_low = mix_masks(low, target.mask_weights)[None]
        refined = cascaded_refinement(
            predictor, coords, labels, mask, mixed_low, steps=self.refine_steps, box_on_first=True
        )
        warnings = list(refined.warnings)
        if not mask.any():
            warnings.insert(0, "the mixed (weighted) mask is empty")
        return _Decoded(refined.mask, mask, mixed_low, refined.steps, warnings)


# PerSAM-F's constructor is PerSAM's: say so to introspection (the entry point hands the root
# `features` group to a method whose signature takes `features`).
PerSAMF.__init__.__signature__ = inspect.signature(PerSAM.__init__)


def references(image, mask_rgb) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One reference or k: (image, mask) arrays or two lists -> two lists of k arrays."""
    images = list(image) if isinstance(image, list | tuple) else [image]
    masks = list(mask_rgb) if isinstance(mask_rgb, list | tuple) else [mask_rgb]
    if not images or len(images) != len(masks):
        raise ValueError(
            f"need as many reference masks as reference images (>= 1), got {len(images)} images "
            f"and {len(masks)} masks"
        )
    return images, masks
