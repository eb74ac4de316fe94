"""Guided attention and semantic prompting on segment_anything's own MaskDecoder."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import SMALL_ARCH
from segment_anything.modeling.transformer import Attention

from persam.backbones.sam import build_sam
from persam.model.decoder import personalize
from persam.model.guided_attention import GuidedAttention, attention_map


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


def test_attention_map_batch_is_each_map_alone():
    g = torch.Generator().manual_seed(5)
    sims = torch.rand(3, 12, 12, generator=g)
    batch = attention_map(sims, (8, 8))
    assert batch.shape == (3, 1, 1, 64)
    for b in range(3):
        assert torch.equal(batch[b : b + 1], attention_map(sims[b], (8, 8)))
    # `valid`: only the unpadded top-left part of each map counts
    valid = torch.tensor([[12, 12], [5, 9], [1, 3]])
    cropped = attention_map(sims, (8, 8), valid=valid)
    for b, (rows, cols) in enumerate(valid.tolist()):
        assert torch.equal(cropped[b : b + 1], attention_map(sims[b, :rows, :cols], (8, 8)))
    assert torch.equal(cropped[0], batch[0]) and not torch.equal(cropped[1], batch[1])
    # a constant map (std 0) guides uniformly instead of producing NaN
    assert torch.equal(attention_map(torch.ones(4, 4), (2, 2)), torch.full((1, 1, 1, 4), 0.5))


def test_batched_guidance_guides_each_image_with_its_own_target():
    """What the embedded SAM's training does: one decoder call over a batch of images, image b
    guided by map b and target embedding b, equals guiding each image alone (as PerSAM does)."""
    from persam.backbones.sam import build_architecture
    from persam.model.decoder import decode_images as decode

    torch.manual_seed(0)
    sam = build_architecture(**SMALL_ARCH).eval()
    handle = personalize(sam)
    feats = torch.randn(2, 32, 8, 8)
    coords, labels = torch.rand(2, 1, 2) * 127, torch.ones(2, 1, dtype=torch.long)
    guidance = attention_map(torch.rand(2, 8, 8), (8, 8))
    targets = torch.randn(2, 32)
    with torch.no_grad():
        with handle.guide(guidance, targets):
            both, _ = decode(sam, feats, (coords, labels), None, None)
        plain, _ = decode(sam, feats, (coords, labels), None, None)
        for i in range(2):
            with handle.guide(guidance[i : i + 1], targets[i]):
                alone, _ = decode(
                    sam, feats[i : i + 1], (coords[i : i + 1], labels[i : i + 1]), None, None
                )
            torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(both[i], plain[i])
