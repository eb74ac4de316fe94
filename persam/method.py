"""The two methods of the paper, built from the component modules.

`PerSAM` (training-free, section 3.1) and `PerSAMF` (section 3.2, scale-aware fine-tuning).
Each learns a `Target` from one reference image and mask, then segments test images:

    encode (cached) -> location prior -> guided, prompted decoder -> cascaded refinement
"""

from __future__ import annotations

from collections.abc import Callable
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
    """What one reference image and mask teach: the personalised concept."""

    embedding: torch.Tensor  # (C,) mean of reference features inside the mask
    location: torch.Tensor  # (C,) pooled feature used for the location prior
    grid_mask: torch.Tensor  # (h, w) bool, the reference mask on the feature grid
    mask_weights: np.ndarray | None = None  # (3,) PerSAM-F mixing weights
    fit: Any = None  # PerSAM-F `FitResult`
    ref_points: np.ndarray | None = None  # PerSAM-F positive point on the reference


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
    ) -> None:
        target_pooling = getattr(target_pooling, "value", target_pooling)  # schema enum -> str
        if refine_steps not in (0, 1, 2):
            raise ValueError(f"method.refine_steps must be 0, 1 or 2, got {refine_steps}")
        if target_pooling not in ("mean", "max_mean"):
            raise ValueError(
                f"method.target_pooling must be mean or max_mean, got {target_pooling}"
            )
        self.name = name
        self.target_pooling = target_pooling
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
    def learn(self, image: np.ndarray, mask_rgb: np.ndarray, **_: Any) -> Target:
        """Target from the reference `image` (H, W, 3) RGB and its annotation `mask_rgb` (H, W, 3)."""
        if not (mask_rgb[..., 0] > 0).any():
            raise EmptyReferenceMask("the reference mask is empty (no pixel with R channel > 0)")
        predictor = self.encoder.set_image(image)
        grid_mask = location_prior.reference_mask_on_grid(predictor, mask_rgb)
        try:
            feats = location_prior.target_features(predictor.features, grid_mask)
        except ValueError as exc:
            raise EmptyReferenceMask(
                f"{exc}: the object is too small to be seen at the encoder's resolution"
            ) from exc
        embedding = location_prior.target_embedding(feats, "mean")
        location = location_prior.target_embedding(feats, self.target_pooling)
        return Target(embedding=embedding, location=location, grid_mask=grid_mask)

    # -- test image ------------------------------------------------------------------------
    def _locate(self, predictor, target: Target, negative: bool):
        sim = location_prior.similarity_map(predictor, target.location)
        coords, labels = location_prior.select_points(
            sim, positive=self.positive_point, negative=negative
        )
        attn_sim = None
        if self.guided_attention:
            attn_sim = attention_map(sim, tuple(predictor.features.shape[-2:]))
        return coords, labels, attn_sim

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
        )
        # plain values (the config schema gives `fused` as an enum)
        self.scale_weights = {
            k: getattr(v, "value", v) for k, v in dict(scale_weights or {}).items()
        }

    def _multiscale(self, predictor, target: Target, attn_sim, coords, labels):
        """SAM's three masks for the prompt: full-res logits (3, H, W), low-res (3, 256, 256)."""
        with self._guidance(target, attn_sim):
            high, scores, low = predictor.predict(
                **self._prompt(coords, labels), multimask_output=True, return_logits=True
            )
        return high, low

    def learn(
        self, image: np.ndarray, mask_rgb: np.ndarray, logger: Any = None, name: str | None = None
    ) -> Target:
        """PerSAM's target, plus the mixing weights fitted to the reference mask."""
        from persam.scale_weights import fit_scale_weights

        target = super().learn(image, mask_rgb)
        with torch.no_grad():
            predictor = self.encoder.set_image(image)
            coords, labels, attn_sim = self._locate(predictor, target, negative=False)
            high, _ = self._multiscale(predictor, target, attn_sim, coords, labels)
        gt = torch.as_tensor(mask_rgb[..., 0] > 0)
        fit = fit_scale_weights(
            torch.as_tensor(high),
            gt,
            logger=logger,
            trainer=self.trainer,
            log_name=f"fit/{name}/loss" if name else "fit/loss",
            **self.scale_weights,
        )
        target.fit = fit
        target.mask_weights = np.asarray(fit.weights, dtype=np.float32)
        target.ref_points = coords
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
