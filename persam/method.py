"""The two methods of the paper, built from the component modules.

`PerSAM` (training-free, section 3.1) and `PerSAMF` (section 3.2, scale-aware fine-tuning).
Each learns a `Target` from one reference image and mask (or k of them: k-shot, the features
pooled over all references, PerSAM-F's weights fitted on all k jointly), then segments test images:

    encode (cached) -> location prior -> guided, prompted decoder -> cascaded refinement
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from persam import location_prior
from persam.decoder import personalize
from persam.encoder import Encoder
from persam.guided_attention import attention_map
from persam.refine import cascaded_refinement


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


class PerSAM:
    """Training-free PerSAM; every paper component is one switch.

    Args:
      sam: the frozen SAM backbone (`persam.backbone.build_sam`).
      encoder: its image encoder with the embedding cache (default: an uncached `Encoder`).
      trainer: unused by PerSAM; PerSAM-F fits with it (a `lightning.Trainer` factory).
      target_pooling: `mean` (PerSAM) or `max_mean` (PerSAM-F) pooling for the location prior.
      positive_point / negative_point: prompt with the similarity arg-max / arg-min.
      guided_attention: modulate the decoder's token-to-image attention by the similarity map.
      semantic_prompt: add the target embedding to the decoder's prompt tokens.
      refine_steps: cascaded post-refinement passes, 0, 1 or 2.
      shot_pooling: with k references, pool the masked features of all `pixels` together or
        pool each reference alone and average the k `images` (identical for one reference).
      shot_points: with k references, the location prior's points on a test image come from
        the `pooled` target (one positive, one negative: as one-shot) or from `each`
        reference's own feature (up to k positives and k negatives).
    """

    name = "persam"

    def __init__(
        self,
        sam: Sam,
        encoder: Encoder | None = None,
        trainer: Callable[..., Any] | None = None,
        name: str = "persam",
        target_pooling: str = "mean",
        positive_point: bool = True,
        negative_point: bool = True,
        guided_attention: bool = True,
        semantic_prompt: bool = True,
        refine_steps: int = 2,
        shot_pooling: str = "pixels",
        shot_points: str = "pooled",
    ) -> None:
        if refine_steps not in (0, 1, 2):
            raise ValueError(f"method.refine_steps must be 0, 1 or 2, got {refine_steps}")
        if target_pooling not in ("mean", "max_mean"):
            raise ValueError(
                f"method.target_pooling must be mean or max_mean, got {target_pooling}"
            )
        if shot_pooling not in ("pixels", "images"):
            raise ValueError(f"method.shot_pooling must be pixels or images, got {shot_pooling}")
        if shot_points not in ("pooled", "each"):
            raise ValueError(f"method.shot_points must be pooled or each, got {shot_points}")
        self.name = name
        self.target_pooling = target_pooling
        self.shot_pooling = shot_pooling
        self.shot_points = shot_points
        self.positive_point = positive_point
        self.negative_point = negative_point
        self.guided_attention = guided_attention
        self.semantic_prompt = semantic_prompt
        self.refine_steps = refine_steps
        self.sam = sam
        self.encoder = encoder or Encoder(sam)
        self.trainer = trainer
        self.decoder = personalize(sam)

    # -- reference -------------------------------------------------------------------------
    @torch.no_grad()
    def learn(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        mask_rgb: np.ndarray | Sequence[np.ndarray],
        **_: Any,
    ) -> Target:
        """Target from the reference `image` (H, W, 3) RGB and its annotation `mask_rgb` (H, W, 3).

        k-shot: lists of k images and k annotations (each pair of one size); the features inside
        the k masks are pooled by `shot_pooling`. One image (or a list of one) is the paper.
        """
        images, masks = references(image, mask_rgb)
        feats, grid_masks = [], []
        for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
            which = "the reference" if len(images) == 1 else f"reference {i + 1} of {len(images)}"
            if not (mask[..., 0] > 0).any():
                raise EmptyReferenceMask(
                    f"{which}: the mask is empty (no pixel with R channel > 0)"
                )
            predictor = self.encoder.set_image(img)
            grid_mask = location_prior.reference_mask_on_grid(predictor, mask)
            try:
                feats.append(location_prior.target_features(predictor.features, grid_mask))
            except ValueError as exc:
                raise EmptyReferenceMask(
                    f"{which}: {exc}: the object is too small to be seen at the encoder's "
                    "resolution"
                ) from exc
            grid_masks.append(grid_mask)
        pool = location_prior.pool_references
        target = Target(
            embedding=pool(feats, "mean", self.shot_pooling),
            location=pool(feats, self.target_pooling, self.shot_pooling),
            grid_mask=grid_masks[0],
            shots=len(images),
        )
        if len(images) > 1:
            target.locations = torch.stack(
                [location_prior.target_embedding(f, self.target_pooling) for f in feats]
            )
        return target

    # -- test image ------------------------------------------------------------------------
    def _locate(self, predictor, target: Target, negative: bool):
        sim = location_prior.similarity_map(predictor, target.location)
        coords, labels = location_prior.select_points(
            sim, positive=self.positive_point, negative=negative
        )
        if self.shot_points == "each" and target.locations is not None:
            coords, labels = self._points_of_each(predictor, target, negative)
        attn_sim = None
        if self.guided_attention:
            attn_sim = attention_map(sim, tuple(predictor.features.shape[-2:]))
        return coords, labels, attn_sim

    def _points_of_each(self, predictor, target: Target, negative: bool):
        """k-shot `shot_points=each`: every reference's own arg-max (and arg-min), positives
        first, a point repeated by two references kept once -> coords (N, 2), labels (N,)."""
        found = [
            location_prior.select_points(
                location_prior.similarity_map(predictor, loc),
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
    def _prompt(coords: np.ndarray, labels: np.ndarray) -> dict:
        if len(coords) == 0:
            return {"point_coords": None, "point_labels": None}
        return {"point_coords": coords, "point_labels": labels}

    @torch.no_grad()
    def segment(self, image: np.ndarray, target: Target) -> Prediction:
        """Segment the personalised object in `image` (H, W, 3) RGB uint8."""
        predictor = self.encoder.set_image(image)
        coords, labels, attn_sim = self._locate(predictor, target, self.negative_point)
        with self._guidance(target, attn_sim):
            masks, _, low_res = predictor.predict(
                **self._prompt(coords, labels), multimask_output=False
            )
        refined = cascaded_refinement(
            predictor, coords, labels, masks[0], low_res[0:1], steps=self.refine_steps
        )
        return Prediction(
            mask=refined.mask,
            coords=coords,
            labels=labels,
            attn_sim=attn_sim,
            first_mask=masks[0],
            first_logits=low_res[0:1],
            steps=refined.steps,
            warnings=refined.warnings,
        )


class PerSAMF(PerSAM):
    """PerSAM-F: learn 2 weights mixing SAM's three multi-scale masks on the reference.

    Args (besides PerSAM's; the defaults are the paper's):
      trainer: a `lightning.Trainer` factory (the `trainer` config group, `_partial_`) that the
        fit completes with its steps and logger; None: a CPU Trainer.
      scale_weights: options of `persam.scale_weights.fit_scale_weights` (steps, lr, ...).
    """

    def __init__(
        self,
        sam: Sam,
        encoder: Encoder | None = None,
        trainer: Callable[..., Any] | None = None,
        name: str = "persam_f",
        target_pooling: str = "max_mean",
        positive_point: bool = True,
        negative_point: bool = False,
        guided_attention: bool = False,
        semantic_prompt: bool = False,
        refine_steps: int = 2,
        shot_pooling: str = "pixels",
        shot_points: str = "pooled",
        scale_weights: dict | None = None,
    ) -> None:
        super().__init__(
            sam,
            encoder,
            trainer,
            name=name,
            target_pooling=target_pooling,
            positive_point=positive_point,
            negative_point=negative_point,
            guided_attention=guided_attention,
            semantic_prompt=semantic_prompt,
            refine_steps=refine_steps,
            shot_pooling=shot_pooling,
            shot_points=shot_points,
        )
        self.scale_weights = dict(scale_weights or {})

    def _multiscale(self, predictor, target: Target, attn_sim, coords, labels):
        """SAM's three masks for the prompt: full-res logits (3, H, W), low-res (3, 256, 256)."""
        with self._guidance(target, attn_sim):
            high, scores, low = predictor.predict(
                **self._prompt(coords, labels), multimask_output=True, return_logits=True
            )
        return high, low

    def learn(
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
        from persam.scale_weights import fit_scale_weights

        images, masks = references(image, mask_rgb)
        target = super().learn(images, masks)
        highs, gts, points = [], [], []
        with torch.no_grad():
            for img, mask in zip(images, masks, strict=True):
                predictor = self.encoder.set_image(img)
                coords, labels, attn_sim = self._locate(predictor, target, negative=False)
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

    @torch.no_grad()
    def segment(self, image: np.ndarray, target: Target) -> Prediction:
        predictor = self.encoder.set_image(image)
        coords, labels, attn_sim = self._locate(predictor, target, self.negative_point)
        high, low = self._multiscale(predictor, target, attn_sim, coords, labels)
        weights = target.mask_weights
        mixed_high = (torch.as_tensor(high) * torch.as_tensor(weights)[:, None, None]).sum(0)
        mask = (mixed_high > self.sam.mask_threshold).numpy()
        mixed_low = (low * weights[:, None, None]).sum(0)[None]
        refined = cascaded_refinement(
            predictor, coords, labels, mask, mixed_low, steps=self.refine_steps, box_on_first=True
        )
        warnings = list(refined.warnings)
        if not mask.any():
            warnings.insert(0, "the mixed (weighted) mask is empty")
        return Prediction(
            mask=refined.mask,
            coords=coords,
            labels=labels,
            attn_sim=attn_sim,
            first_mask=mask,
            first_logits=mixed_low,
            steps=refined.steps,
            warnings=warnings,
        )


def references(image, mask_rgb) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One reference or k: (image, mask) arrays or two lists -> two lists of k arrays."""
    images = [image] if isinstance(image, np.ndarray) else list(image)
    masks = [mask_rgb] if isinstance(mask_rgb, np.ndarray) else list(mask_rgb)
    if not images or len(images) != len(masks):
        raise ValueError(
            f"need as many reference masks as reference images (>= 1), got {len(images)} images "
            f"and {len(masks)} masks"
        )
    return images, masks
