"""SAM's mask decoder with the two PerSAM additions installed (guided attention, semantic prompt),
and `decode`: the one decoder call every caller makes.

`personalize(sam)` installs both once on `sam.mask_decoder`; `decoder.guide(...)` turns them on
for the calls made inside the `with` block, so `segment_anything.SamPredictor` is used unchanged.
Outside a `guide` block (or with both arguments `None`) the decoder is `segment_anything`'s own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from torch import Tensor

from persam.model import guided_attention
from persam.model.semantic_prompt import SemanticPrompt


class PersonalizedDecoder:
    """Handle on a `Sam` whose decoder can be target-guided and target-prompted."""

    def __init__(self, sam: Sam) -> None:
        decoder = sam.mask_decoder
        transformer = decoder.transformer
        # Another backbone's decoder (persam/backbones/hf_sam.py) names its attention subclass and the
        # argument names of its transformer; segment_anything's use the defaults.
        cls = getattr(decoder, "guided_attention_class", guided_attention.GuidedAttention)
        self.attentions = guided_attention.install(transformer, cls)
        self.semantic = SemanticPrompt(transformer, **getattr(decoder, "semantic_prompt_names", {}))

    @contextmanager
    def guide(
        self, attn_sim: Tensor | None = None, target_embedding: Tensor | None = None
    ) -> Iterator[None]:
        """Guide the decoder calls inside the block.

        attn_sim (B, 1, 1, h*w) from `guided_attention.attention_map`; target_embedding (C,) or
        (B, C). B = 1 guides every image/prompt alike (SamPredictor's calls); B > 1 guides the
        b-th image of a batched decoder call with the b-th entries.
        """
        for attn in self.attentions:
            attn.guidance = attn_sim
        self.semantic.embedding = (
            None
            if target_embedding is None
            else target_embedding.reshape(-1, 1, target_embedding.shape[-1])
        )
        try:
            yield
        finally:
            for attn in self.attentions:
                attn.guidance = None
            self.semantic.embedding = None


def personalize(sam: Sam) -> PersonalizedDecoder:
    """Install PerSAM's decoder additions on `sam` (idempotent) and return the handle."""
    handle = getattr(sam, "_persam_decoder", None)
    if handle is None:
        handle = PersonalizedDecoder(sam)
        object.__setattr__(sam, "_persam_decoder", handle)
    return handle


def decode(
    predictor: SamPredictor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    return_logits: bool = False,
    best_only: bool = False,
    multimask: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM's masks for B prompts on the predictor's image, in one decoder pass: the decoder
    call of every caller (step 0, PerSAM-F's three masks, refinement, video, the demo).

    coords (B, N, 2) (x, y) original pixels or None, labels (B, N), boxes (B, 4) or None,
    mask_input (B, 1, h, w) or None -> masks (B, M, H, W) (bool, or logits with
    `return_logits`), scores (B, M), low-res logits (B, M, h, w); M = 3 (`multimask`) or 1
    (SAM's single-mask output). With B = 1 this is exactly `SamPredictor.predict` (same
    transforms, same module calls as `predict_torch`). PerSAM's guidance applies inside a
    `PersonalizedDecoder.guide` block.

    `best_only`: only each prompt's best-scoring mask (first arg-max of its scores) is brought
    to full resolution -> masks (B, H, W), the same values as the full call's, at a third of
    the upsampling (for `SamPredictor` itself; another predictor's `predict_torch` upsamples
    all three and the best are picked).
    """
    device = predictor.device
    coords_t = labels_t = boxes_t = mask_t = None
    if coords is not None:
        coords = predictor.transform.apply_coords(coords, predictor.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)
        labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)
    if boxes is not None:
        boxes = predictor.transform.apply_boxes(boxes, predictor.original_size)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float, device=device)[:, None, :]
    if mask_input is not None:
        mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=device)
    with torch.no_grad():
        if type(predictor).predict_torch is SamPredictor.predict_torch:
            low, scores = _decode_low_res(predictor, coords_t, labels_t, boxes_t, mask_t, multimask)
            scores = scores.cpu().numpy()
            best = scores.argmax(axis=1) if best_only else None
            threshold = None if return_logits else predictor.model.mask_threshold
            masks = _upsample(predictor, low, best, threshold)
            return masks.cpu().numpy(), scores, low.cpu().numpy()
        masks, scores, low = predictor.predict_torch(
            coords_t,
            labels_t,
            boxes_t,
            mask_t,
            multimask_output=multimask,
            return_logits=return_logits,
        )
    masks, scores = masks.cpu().numpy(), scores.cpu().numpy()
    if best_only:
        masks = masks[np.arange(len(masks)), scores.argmax(axis=1)]
    return masks, scores, low.cpu().numpy()


def _decode_low_res(predictor: SamPredictor, coords, labels, boxes, mask_input, multimask=True):
    """`SamPredictor.predict_torch`'s decoder call without the upsampling -> low-res logits
    (B, M, h, w), scores (B, M)."""
    model = predictor.model
    sparse, dense = model.prompt_encoder(
        points=None if coords is None else (coords, labels), boxes=boxes, masks=mask_input
    )
    return model.mask_decoder(
        image_embeddings=predictor.features,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _upsample(
    predictor: SamPredictor,
    low: torch.Tensor,
    best: np.ndarray | None = None,
    threshold: float | None = None,
) -> torch.Tensor:
    """`postprocess_masks` of low-res logits (B, M, h, w) -> (B, M, H, W); with `best` (B,),
    only mask best[b] of each -> (B, H, W); with `threshold`, the masks (logits > threshold,
    bool) instead of the logits.

    It runs on M masks at a time, as `predict_torch` does on one prompt: PyTorch's CPU bilinear
    interpolation picks its kernel by the channel count (and thread count), and the batch
    dimension changes no value, so these are the bits of upsampling each prompt's M masks; the
    picked masks are grouped M to a call (the last group padded with copies). One call per group
    keeps its planes in the CPU cache (faster than one call over the batch).
    """
    b, m = low.shape[:2]
    size = (predictor.input_size, predictor.original_size)

    def post(x: torch.Tensor) -> torch.Tensor:
        full = predictor.model.postprocess_masks(x, *size)
        return full if threshold is None else full > threshold

    if best is None and m == 1:
        # One plane per prompt (single-mask output): as `predict_torch` makes it, one call over
        # the batch (the batch changes no value); made masks two prompts at a time, so that
        # the full-size logits stay a block the allocator reuses (twice as fast at 1024 x 1024
        # as one call over 64 prompts, whose fresh logits pay in page faults).
        if threshold is None or b <= 2:
            return post(low)
        return torch.cat([post(low[i : i + 2]) for i in range(0, b, 2)])
    groups = low
    if best is not None:
        picked = low[torch.arange(b, device=low.device), torch.as_tensor(best, device=low.device)]
        n = -(-b // m)
        if n * m > b:
            picked = torch.cat([picked, picked[-1:].expand(n * m - b, -1, -1)])
        groups = picked.reshape(n, m, *low.shape[-2:])
    full = torch.cat([post(g[None]) for g in groups])
    return full if best is None else full.reshape(-1, *full.shape[-2:])[:b]


def decode_images(
    sam: Sam,
    features: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    mask_input: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """`decode` for training: a batch of image embeddings (B, C, h, w) with one prompt set each,
    with gradients (the embedded model's training, `persam.training.module`).

    `MaskDecoder.predict_masks` repeats every image embedding once per prompt (one image, many
    prompts); here image i pairs with prompt set i. Returns all four masks (token 0 = the
    single-mask output, 1-3 = the multimask outputs) as low-res logits (B, 4, 4h, 4w) and the
    IoU predictions (B, 4).
    """
    md = sam.mask_decoder
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    b, c, h, w = features.shape
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    src = features + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    hs, src = md.transformer(src, pos, tokens)
    iou_token, mask_tokens = hs[:, 0], hs[:, 1 : 1 + md.num_mask_tokens]
    upscaled = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [mlp(mask_tokens[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
    )
    bu, cu, hu, wu = upscaled.shape
    masks = (hyper @ upscaled.view(bu, cu, hu * wu)).view(bu, -1, hu, wu)
    return masks, md.iou_prediction_head(iou_token)
