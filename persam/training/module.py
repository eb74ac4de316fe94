"""The Lightning module that trains a small `Sam` from scratch on scene pairs.

Per batch (2B images, B identities x 2 scenes):

1. The image encoder runs once on all images.
2. Identity matching (what PerSAM's location prior needs): each image's mask-pooled mean
   feature (the "target embedding", on the feature grid) is compared by cosine similarity with
   every feature of every image; `training.identity.identity_loss` makes the map high on the same
   identity's object and low elsewhere (distractors, background, other identities).
3. Promptable segmentation as SAM is trained, `passes` decoder passes per batch: the first
   prompted by one positive point (ambiguous: SAM's three masks, min-over-masks loss), a
   positive and a negative point, or a jittered box; each later pass adds the previous
   prediction's low-res logits as a mask prompt, with probability `correction_prob` a point in
   the previous error region and with probability `box_prob` the box of the previous mask (the
   prompts of PerSAM's cascaded refinement). Every pass: focal + dice on the single-mask output
   and min over the three multimask outputs, and MSE of the IoU head to the actual IoU.
4. With probability `guided_prob` / `semantic_prob` per batch the decoder runs with PerSAM's
   target-guided attention / target-semantic prompt computed from the *other* scene of the pair
   (detached), so that the training-free components meet a decoder that has seen them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from persam.backbones.sam import build_architecture, load_checkpoint
from persam.model.decoder import decode_images, personalize
from persam.model.guided_attention import attention_map
from persam.model.losses import dice_loss, focal_loss, mask_iou
from persam.training import identity as id_losses
from persam.training.data import grid_fraction
from persam.training.prompts import (
    PointSet,
    boxes_from,
    correction_points,
    gt_boxes,
    initial_points,
)

FIRST_PROMPTS = ("point", "pos_neg", "box")
#: How the three multimask outputs are trained: SAM's min over the three against the object, or
#: nested scales (part, object, group) on the first pass.
MULTIMASK = ("min", "nested")
# Focal loss weighting both classes alike: with detectron's alpha = 0.25 the foreground weighs a
# third of the background and a model trained from scratch for a few hundred steps collapses to
# empty masks.
FOCAL_ALPHA = -1.0


class EmbeddedSamModule(L.LightningModule):
    """Trains `Sam` (built by `persam.backbones.sam.build_architecture(**architecture)`), from random
    weights (torch's global seed) or from the state dict `init_from`.

    Only `self.sam`'s state dict is shipped; the identity loss's `logit_scale`/`logit_bias`
    are training-only parameters.
    """

    def __init__(
        self,
        architecture: dict[str, Any],
        seed: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        passes: int = 3,
        first_prompt_probs: tuple[float, float, float] = (0.35, 0.4, 0.25),
        correction_prob: float = 0.7,
        box_prob: float = 0.5,
        guided_prob: float = 0.5,
        semantic_prob: float = 0.5,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        identity_weight: float = 1.0,
        nce_temperature: float = 0.1,
        loss_size: int = 128,
        extra_weight: float = 1.0,
        multimask: str = "min",
        schedule_steps: int | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if multimask not in MULTIMASK:
            raise ValueError(
                f"train.module.multimask={multimask!r}: expected one of {list(MULTIMASK)}"
            )
        self.save_hyperparameters()
        self.sam = build_architecture(**architecture)
        #: the SAM state dict training continued from (resolved path), or None (random init)
        self.init_from = None
        if init_from:
            # e.g. the shipped weights; read at once, so that a bad file fails before rendering
            self.init_from = str(Path(str(init_from)).expanduser().resolve())
            load_checkpoint(self.sam, self.init_from)
        self.patch = int(architecture.get("vit_patch_size", 16))
        self.decoder_handle = personalize(self.sam)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))
        probs = np.asarray(first_prompt_probs, dtype=np.float64)
        self.first_prompt_probs = probs / probs.sum()

    # -- pieces ----------------------------------------------------------------------------
    def _decode(self, features, points: PointSet, boxes, mask_input, guidance, semantic):
        with self.decoder_handle.guide(guidance, semantic):
            return decode_images(
                self.sam, features, points.tensors(features.device), boxes, mask_input
            )

    def _mask_losses(
        self, low: Tensor, iou_pred: Tensor, gt: Tensor, weight: Tensor, scales: Tensor | None
    ):
        """Losses at the resolution of `gt` (the low-res logits upsampled bilinearly to it, as
        `Sam.postprocess_masks` does); `up` are those upsampled logits. `scales` (N, 3, s, s):
        targets of the three multimask outputs (nested scales), else min over them against
        `gt`. The IoU head always learns the IoU with the object `gt`."""
        size = gt.shape[-2:]
        up = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        target = gt if scales is None else torch.cat([gt, scales], dim=1)
        focal = focal_loss(up, target, alpha=FOCAL_ALPHA, weight=weight)
        dice = dice_loss(up, target, weight)
        per_mask = self.hparams.focal_weight * focal + self.hparams.dice_weight * dice
        with torch.no_grad():
            actual = mask_iou(up, (gt > 0.5).float(), weight)
        iou_loss = F.mse_loss(iou_pred, actual)
        multi = per_mask[:, 1:].min(dim=1).values if scales is None else per_mask[:, 1:].mean(1)
        return {
            "single": per_mask[:, 0].mean(),
            "multi": multi.mean(),
            "iou_head": iou_loss,
            "iou": actual[:, 0].mean(),
            "up": up,
        }

    def _scales(self, gt, parts, group, points: PointSet, kind: str) -> Tensor:
        """Nested targets (N, 3, S, S) of the first pass: the part under each sample's first
        (positive) point, the object, the group; the object where a scale is missing."""
        part = gt.clone()
        if parts is not None and kind != "box":
            for i, pts in enumerate(points.points):
                if not pts:
                    continue
                x, y, _ = pts[0]
                k = int(parts[i, int(y), int(x)])
                if k > 0:
                    region = (parts[i] == k).to(gt.dtype)
                    if region.sum() < 0.9 * gt[i, 0].sum():
                        part[i, 0] = region
        big = gt if group is None or kind == "box" else torch.maximum(group, gt)
        return torch.cat([part, gt, big], dim=1)

    def _segment(
        self, features, gt, weight, valid, rng, guidance, semantic, parts=None, group=None
    ) -> dict:
        """SAM's interactive training on targets `gt` (N, 1, S, S) of images `features`:
        `passes` decoder passes, the first prompt drawn from FIRST_PROMPTS, later passes add
        the previous mask, correction points and boxes. `parts` (N, S, S) / `group`
        (N, 1, S, S): the nested scales (`multimask="nested"`). Returns the pass-averaged losses
        and the IoU of the first / last pass."""
        n = features.shape[0]
        # mask losses at `loss_size` (area-downsampled soft targets): the loss is 16x cheaper
        # than at the input size and still finer than the 4 x grid low-res masks
        size = gt.shape[-1]
        loss_size = min(int(self.hparams.loss_size), size)
        gt_loss = F.interpolate(gt, size=(loss_size, loss_size), mode="area")
        weight_loss = F.interpolate(weight, size=(loss_size, loss_size), mode="area")
        to_loss = loss_size / size
        gt_small = (gt_loss[:, 0] > 0.5).cpu().numpy()
        valid_small = (valid.float() * to_loss).ceil().long().cpu().numpy()
        gt_np = gt[:, 0].bool().cpu().numpy()
        valid_np = valid.cpu().numpy()
        kind = FIRST_PROMPTS[int(rng.choice(len(FIRST_PROMPTS), p=self.first_prompt_probs))]
        if kind == "box":
            points, boxes = PointSet(n), gt_boxes(gt_np, valid_np, rng)
        else:
            points, boxes = initial_points(gt_np, valid_np, rng, negative=kind == "pos_neg"), None
        scales = None
        if self.hparams.multimask == "nested":
            scales = F.interpolate(
                self._scales(gt, parts, group, points, kind),
                size=(loss_size, loss_size),
                mode="area",
            )
        mask_input = None
        seg = {"single": 0.0, "multi": 0.0, "iou_head": 0.0}
        first_iou = last_iou = None
        passes = int(self.hparams.passes)
        for p in range(passes):
            low, iou_pred = self._decode(features, points, boxes, mask_input, guidance, semantic)
            out = self._mask_losses(low, iou_pred, gt_loss, weight_loss, scales if p == 0 else None)
            for k in seg:
                seg[k] = seg[k] + out[k] / passes
            first_iou = out["iou"] if first_iou is None else first_iou
            last_iou = out["iou"]
            if p + 1 == passes:
                break
            with torch.no_grad():
                # the mask PerSAM passes on: the single output first (point pairs, boxes),
                # then the best-scored of the three
                if p == 0 and kind != "point":
                    idx = torch.zeros(n, dtype=torch.long)
                else:
                    idx = iou_pred[:, 1:].argmax(1) + 1
                rows = torch.arange(n)
                mask_input = low[rows, idx].unsqueeze(1).detach()
                pred = (out["up"][rows, idx] > 0).cpu().numpy()
            if rng.random() < self.hparams.correction_prob:
                points = correction_points(
                    points, gt_small, pred, valid_small, rng, scale=1 / to_loss
                )
            if kind != "box":
                boxes = (
                    boxes_from(pred, gt_np, valid_np, rng, scale=1 / to_loss)
                    if rng.random() < self.hparams.box_prob
                    else None
                )
            if len(points) == 0 and boxes is None:
                boxes = gt_boxes(gt_np, valid_np, rng)
        seg["iou_first"], seg["iou_last"] = first_iou, last_iou
        return seg

    # -- Lightning -------------------------------------------------------------------------
    # Over 80 lines: one step of the embedded model's recipe (prompt rounds, guided and plain
    # passes, the losses and their logging), kept in the order the record describes it.
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images, gt, valid, identity = (
            batch["image"],
            batch["mask"],
            batch["valid"],
            batch["identity"],
        )
        n = images.shape[0]
        rng = np.random.default_rng([self.hparams.seed, int(self.global_step), 23])

        features = self.sam.image_encoder(images)  # (N, C, g, g)
        g = features.shape[-1]
        flat = features.flatten(2)
        frac = grid_fraction(gt, g)
        weight = torch.zeros_like(gt)
        for i, (h, w) in enumerate(valid.tolist()):
            weight[i, :, :h, :w] = 1.0
        valid_cells = grid_fraction(weight, g) > 0
        inside = id_losses.cell_membership(frac)
        protos = id_losses.prototypes(flat, inside)
        sim = id_losses.similarity(flat, protos)
        ident = id_losses.identity_loss(
            sim,
            frac,
            valid_cells,
            identity,
            self.logit_scale.exp(),
            self.logit_bias,
            self.hparams.nce_temperature,
        )

        # PerSAM's additions, from the other scene of each pair (reference -> this image)
        pair = (torch.arange(n) + n // 2) % n
        guidance = semantic = None
        if rng.random() < self.hparams.guided_prob:
            ref_sim = sim.detach()[pair, torch.arange(n)].view(n, g, g)
            cells = (valid + self.patch - 1) // self.patch  # grid cells of the unpadded image
            guidance = attention_map(ref_sim, (g, g), valid=cells)
        if rng.random() < self.hparams.semantic_prob:
            semantic = protos.detach()[pair]

        seg = self._segment(
            features,
            gt,
            weight,
            valid,
            rng,
            guidance,
            semantic,
            parts=batch.get("parts"),
            group=batch.get("group"),
        )
        others_ok = batch.get("others_ok")
        extra = None
        if others_ok is not None and bool(others_ok.any()):
            # more promptable-segmentation targets from the same encoder pass: visible
            # distractors, decoded plainly (no PerSAM additions; they are not the reference's)
            img_idx, slot = others_ok.nonzero(as_tuple=True)
            extra = self._segment(
                features[img_idx],
                batch["others"][img_idx, slot].unsqueeze(1),
                weight[img_idx],
                valid[img_idx],
                rng,
                None,
                None,
            )
            for k in ("single", "multi", "iou_head"):
                seg[k] = seg[k] + self.hparams.extra_weight * extra[k]
        first_iou, last_iou = seg["iou_first"], seg["iou_last"]

        seg_loss = seg["single"] + seg["multi"] + self.hparams.iou_weight * seg["iou_head"]
        id_loss = ident["bce"] + ident["nce"]
        loss = seg_loss + self.hparams.identity_weight * id_loss
        self.log_dict(
            {
                "train/loss": loss,
                "train/seg": seg_loss,
                "train/single": seg["single"],
                "train/multi": seg["multi"],
                "train/iou_head": seg["iou_head"],
                "train/identity_bce": ident["bce"],
                "train/identity_nce": ident["nce"],
                "train/argmax_hit": ident["argmax_hit"],
                "train/iou_first": first_iou,
                "train/iou_last": last_iou,
                "train/iou_other": extra["iou_last"] if extra is not None else float("nan"),
                "train/lr": self.optimizers().param_groups[0]["lr"],
            },
            on_step=True,
            on_epoch=False,
            batch_size=n,
        )
        self.log("loss", loss, on_step=True, prog_bar=True, logger=False, batch_size=n)
        self.log("iou", last_iou, on_step=True, prog_bar=True, logger=False, batch_size=n)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or "pos_embed" in name or "rel_pos" in name or "logit_" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        # the cosine schedule's length: the run's max_steps, or `schedule_steps` (to repeat a run
        # that a time limit stopped before its last step)
        total = max(1, int(self.hparams.schedule_steps or self.trainer.max_steps))
        warmup = min(int(self.hparams.warmup_steps), total // 2)
        floor = float(self.hparams.min_lr_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
