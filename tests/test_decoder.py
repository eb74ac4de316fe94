"""Guided attention and semantic prompting on segment_anything's own MaskDecoder."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.transformer import Attention

from persam.backbone import build_sam
from persam.decoder import personalize
from persam.guided_attention import GuidedAttention, attention_map


@pytest.fixture(scope="module")
def sams():
    """A random-init SAM (small encoder, full-size decoder) and an untouched deep copy."""
    sam = build_sam(
        name="tiny",
        seed=3,
        device="cpu",
        encoder_embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=1,
        encoder_global_attn_indexes=[0],
    )
    return sam, copy.deepcopy(sam)


def _inputs(sam, seed=0, n_points=2):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    coords = torch.rand(1, n_points, 2, generator=g) * 1024
    labels = torch.tensor([[1] + [0] * (n_points - 1)])
    box = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    masks = torch.randn(1, 1, 256, 256, generator=g)
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=box, masks=masks)
    return emb, sam.prompt_encoder.get_dense_pe(), sparse, dense


@pytest.mark.parametrize("multimask", [True, False])
def test_disabled_equals_segment_anything_exactly(sams, multimask):
    sam, original = sams
    handle = personalize(sam)
    assert all(isinstance(a, GuidedAttention) for a in handle.attentions)
    assert not isinstance(
        original.mask_decoder.transformer.layers[0].cross_attn_token_to_image, GuidedAttention
    )
    args = _inputs(sam)
    with handle.guide(attn_sim=None, target_embedding=None):
        ours = sam.mask_decoder(*args, multimask_output=multimask)
    theirs = original.mask_decoder(*args, multimask_output=multimask)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_state_dict_keys_unchanged(sams):
    sam, original = sams
    personalize(sam)
    assert list(sam.state_dict()) == list(original.state_dict())


def test_guidance_changes_output_and_is_cleared(sams):
    sam, _ = sams
    handle = personalize(sam)
    args = _inputs(sam, seed=1)
    plain = sam.mask_decoder(*args, multimask_output=True)[0]
    sim = torch.rand(500, 700)
    with handle.guide(attn_sim=attention_map(sim, (64, 64))):
        guided = sam.mask_decoder(*args, multimask_output=True)[0]
    with handle.guide(target_embedding=torch.randn(256)):
        prompted = sam.mask_decoder(*args, multimask_output=True)[0]
    after = sam.mask_decoder(*args, multimask_output=True)[0]
    assert not torch.allclose(plain, guided)
    assert not torch.allclose(plain, prompted)
    assert torch.equal(plain, after)


def test_guided_attention_formula():
    """softmax(softmax(QK^T/sqrt(d)) + sim), checked against a direct computation."""
    torch.manual_seed(0)
    attn = Attention(64, 4, downsample_rate=2)
    attn.__class__ = GuidedAttention
    q, k = torch.randn(1, 5, 64), torch.randn(1, 16, 64)
    sim = torch.rand(1, 1, 1, 16)
    attn.guidance = sim
    out = attn(q, k, k)
    qh = attn.q_proj(q).reshape(1, 5, 4, 8).transpose(1, 2)
    kh = attn.k_proj(k).reshape(1, 16, 4, 8).transpose(1, 2)
    vh = attn.v_proj(k).reshape(1, 16, 4, 8).transpose(1, 2)
    w = torch.softmax(torch.softmax(qh @ kh.transpose(-1, -2) / 8**0.5, -1) + sim, -1)
    expected = attn.out_proj((w @ vh).transpose(1, 2).reshape(1, 5, 32))
    torch.testing.assert_close(out, expected)


def test_personalize_is_idempotent(sams):
    sam, _ = sams
    assert personalize(sam) is personalize(sam)
    n_hooks = len(sam.mask_decoder.transformer._forward_pre_hooks)
    personalize(sam)
    assert len(sam.mask_decoder.transformer._forward_pre_hooks) == n_hooks == 1
