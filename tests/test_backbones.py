"""Backbone families beyond SAM's ViT (issue 17), on random weights (no download).

For each family: with every PerSAM component off, the method's mask is the family's own
predictor's; each component changes the decoder's output; PerSAM-F fits; the embedding cache keys
on the backbone. Bad input: another family's checkpoint, a missing optional dependency, an
unsupported input size.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import ROOT

from persam.backbones.sam import (
    CheckpointError,
    InputSizeError,
    MissingDependencyError,
    build_sam,
    require,
)
from persam.model.cache import EmbeddingCache
from persam.model.encoder import Encoder
from persam.model.method import PerSAM, PerSAMF

SMALL_VIT = dict(
    encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=[0]
)


def scene(seed: int, size=(72, 96)) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (a bright disc on noise) and its PerSeg-style RGB mask (R > 0 inside)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w, 3), np.uint8)
    cx, cy = int(rng.integers(25, w - 25)), int(rng.integers(25, h - 25))
    cv2.circle(img, (cx, cy), 16, (250, 200, 40), -1)
    cv2.circle(mask, (cx, cy), 16, (128, 0, 0), -1)
    return img, mask


# -- the families ----------------------------------------------------------------------------


def compose_backbone(*overrides: str):
    from hydra import compose, initialize_config_dir

    from persam.conf import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides)).backbone


def mobile_sam_model():
    """`backbone=mobile_sam backbone.checkpoint=random`, built from the config."""
    pytest.importorskip("mobile_sam", reason="pip install 'persam[mobile-sam]'")
    from hydra.utils import instantiate

    cfg = compose_backbone("backbone=mobile_sam", "backbone.checkpoint=random")
    return instantiate(cfg, seed=1, device="cpu")


def mobile_sam_own_predictor(sam):
    """The `mobile_sam` package's own model and predictor, holding `sam`'s weights."""
    import mobile_sam

    own = mobile_sam.sam_model_registry["vit_t"]()
    own.load_state_dict(sam.state_dict())
    return mobile_sam.SamPredictor(own.eval())


def hf_sam_model():
    """`backbone=hf_sam backbone.checkpoint=random` with a small ViT (SAM's decoder)."""
    pytest.importorskip("transformers", reason="pip install 'persam[hf-sam]'")
    from hydra.utils import instantiate

    small = [f"backbone.{k}={v}" for k, v in SMALL_VIT.items()]
    cfg = compose_backbone("backbone=hf_sam", "backbone.checkpoint=random", *small)
    return instantiate(cfg, seed=1, device="cpu")


class HFOwnPredictor:
    """Hugging Face's own pipeline: `SamProcessor` (resize, normalise, pad, point scaling,
    mask post-processing) and `SamModel.forward`, with SamPredictor's call."""

    def __init__(self, sam) -> None:
        import transformers

        self.model = sam.hf_model
        self.processor = transformers.SamProcessor(image_processor=transformers.SamImageProcessor())

    def set_image(self, image: np.ndarray) -> None:
        self.image = image
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            self.embedding = self.model.get_image_embeddings(inputs["pixel_values"])

    def predict(self, point_coords, point_labels, multimask_output):
        inputs = self.processor(
            images=self.image,
            input_points=[[point_coords.tolist()]],
            input_labels=[[point_labels.tolist()]],
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model(
                image_embeddings=self.embedding,
                input_points=inputs["input_points"],
                input_labels=inputs["input_labels"],
                multimask_output=multimask_output,
            )
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        return masks[0][0].numpy(), out.iou_scores[0, 0].numpy(), out.pred_masks[0, 0].numpy()


def efficientvit_sam_model():
    """`backbone=efficientvit_sam_l0 backbone.checkpoint=random` (512 px encoder input)."""
    pytest.importorskip("efficientsam", reason="pip install 'persam[efficientvit-sam]'")
    from hydra.utils import instantiate

    cfg = compose_backbone("backbone=efficientvit_sam_l0", "backbone.checkpoint=random")
    return instantiate(cfg, seed=1, device="cpu")


def efficientvit_sam_own_predictor(sam):
    """The `efficientsam` package's own model (architecture function, no weights) and
    predictor, holding `sam`'s weights."""
    from efficientsam.models.efficientvit.sam import (
        EfficientViTSamPredictor,
        efficientvit_sam_l0,
    )
    from efficientsam.models.nn.norm import set_norm_eps

    own = efficientvit_sam_l0(image_size=512)
    set_norm_eps(own, 1e-6)
    own.load_state_dict(sam.state_dict())
    return EfficientViTSamPredictor(own.eval())


def need_sam2() -> None:
    """Skip without `sam2`, without importing it (its import initialises Hydra globally)."""
    import importlib.util

    if importlib.util.find_spec("sam2") is None:
        pytest.skip("sam2 is not installed: pip install 'persam[sam2]'")


def sam2_model():
    """`backbone=sam2_hiera_t backbone.checkpoint=random`, from the package's model config."""
    need_sam2()
    from hydra.utils import instantiate

    cfg = compose_backbone("backbone=sam2_hiera_t", "backbone.checkpoint=random")
    return instantiate(cfg, seed=1, device="cpu")


def sam2_own_predictor(sam):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(sam)


FAMILIES = {
    "mobile_sam": (mobile_sam_model, mobile_sam_own_predictor),
    "sam2_hiera_t": (sam2_model, sam2_own_predictor),
    "efficientvit_sam_l0": (efficientvit_sam_model, efficientvit_sam_own_predictor),
    "hf_sam": (hf_sam_model, HFOwnPredictor),
}


# SAM 2's Hiera at 1024 px is the slowest family to build and run: in `make test`, not in the
# edit loop's -m "not slow" (the other families check the same code paths there)
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(f, marks=pytest.mark.slow) if f == "sam2_hiera_t" else f for f in FAMILIES
    ],
)
def family(request, tmp_path_factory):
    build, own = FAMILIES[request.param]
    sam = build()
    cache = EmbeddingCache(tmp_path_factory.mktemp(f"cache-{request.param}"))
    return request.param, sam, Encoder(sam, cache), own


def persam(sam, encoder, cls=PerSAM, **switches):
    off = dict(negative_point=False, guided_attention=False, semantic_prompt=False, refine_steps=0)
    return cls(sam, encoder, **{**off, **switches})


def test_components_off_equal_the_backbones_own_predictor(family):
    _, sam, encoder, own = family
    ref, ref_mask = scene(0)
    image, _ = scene(1)
    method = persam(sam, encoder)
    pred = method.segment(image, method.learn(ref, ref_mask))

    predictor = own(sam)
    predictor.set_image(image)
    masks, _, low = predictor.predict(
        point_coords=pred.coords, point_labels=pred.labels, multimask_output=False
    )
    np.testing.assert_allclose(pred.first_logits, low[0:1], atol=1e-4)
    assert np.array_equal(pred.mask, masks[0])


def test_each_component_changes_the_output(family):
    _, sam, encoder, _ = family
    ref, ref_mask = scene(0)
    image, _ = scene(1)
    base = persam(sam, encoder)
    target = base.learn(ref, ref_mask)
    plain = base.segment(image, target)
    for switch in ("guided_attention", "semantic_prompt", "negative_point"):
        pred = persam(sam, encoder, **{switch: True}).segment(image, target)
        assert not np.allclose(pred.first_logits, plain.first_logits, atol=1e-5), switch
    refined = persam(sam, encoder, refine_steps=2).segment(image, target)
    assert len(refined.steps) == 2 and len(plain.steps) == 0
    assert np.array_equal(refined.first_mask, plain.first_mask)


def test_persam_f_fits(family):
    _, sam, encoder, _ = family
    ref, ref_mask = scene(0)
    image, _ = scene(1)
    method = PerSAMF(sam, encoder, scale_weights=dict(steps=30, lr=1e-2, fused="eager"))
    target = method.learn(ref, ref_mask)
    losses = target.fit.losses
    assert len(losses) == 30 and np.isfinite(losses).all() and losses[-1] < losses[0]
    assert np.isclose(target.mask_weights.sum(), 1.0, atol=1e-5)
    pred = method.segment(image, target)
    assert pred.mask.shape == image.shape[:2] and len(pred.steps) == 2


def test_embedding_cache_keys_on_the_backbone(family, tmp_path):
    name, sam, _, _ = family
    image, _ = scene(2)
    cache = EmbeddingCache(tmp_path)
    ours = Encoder(sam, cache)
    vit = build_sam(name="tiny", checkpoint="random", device="cpu", **SMALL_VIT)
    other = Encoder(vit, cache)
    a = ours(image)
    b = other(image)
    assert cache.stats.misses == 2 and cache.stats.hits == 0
    assert a.features.shape != b.features.shape or not torch.equal(a.features, b.features)
    again = ours(image)
    assert cache.stats.hits == 1 and torch.equal(again.features, a.features), name


# -- MobileSAM specifics ---------------------------------------------------------------------


@pytest.mark.slow
def test_mobile_sam_keeps_timms_registry():
    """Importing `mobile_sam` itself replaces timm's tiny_vit_* models; persam's import does
    not. Run in fresh interpreters, since the package is imported once per process."""
    pytest.importorskip("mobile_sam")
    probe = (
        "import timm.models._registry as r;{imp};"
        "print(r._model_entrypoints['tiny_vit_5m_224'].__module__)"
    )

    def entry(imp: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", probe.format(imp=imp)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    assert entry("import mobile_sam.modeling.tiny_vit_sam") != "timm.models.tiny_vit"
    assert (
        entry("from persam.backbones.mobile_sam import tiny_vit_class; tiny_vit_class()")
        == "timm.models.tiny_vit"
    )


def test_mobile_sam_refuses_other_input_sizes():
    pytest.importorskip("mobile_sam")
    from persam.backbones.mobile_sam import build_mobile_sam

    with pytest.raises(InputSizeError, match=r"backbone.image_size=512.*backbone.image_size=1024"):
        build_mobile_sam(checkpoint="random", image_size=512, device="cpu")


def test_mobile_sam_refuses_a_vit_checkpoint(tmp_path):
    pytest.importorskip("mobile_sam")
    from persam.backbones.mobile_sam import build_mobile_sam

    path = tmp_path / "sam_vit_tiny.pth"
    vit = build_sam(name="tiny", checkpoint="random", device="cpu", **SMALL_VIT)
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_mobile_sam(checkpoint=str(path), device="cpu")
    msg = str(err.value)
    assert "sam_vit_tiny.pth" in msg and "SAM ViT" in msg and "backbone=mobile_sam" in msg
    assert "mobile_sam.pt" in msg and "backbone.checkpoint=" in msg


def test_missing_mobile_sam_checkpoint_says_where_to_download(tmp_path):
    pytest.importorskip("mobile_sam")
    from persam.backbones.mobile_sam import build_mobile_sam

    with pytest.raises(CheckpointError) as err:
        build_mobile_sam(checkpoint=str(tmp_path / "mobile_sam.pt"), device="cpu")
    msg = str(err.value)
    assert "https://github.com/ChaoningZhang/MobileSAM" in msg
    assert "backbone.checkpoint=/path/to/mobile_sam.pt" in msg and "checkpoint=random" in msg


def test_missing_mobile_sam_package_names_the_extra(monkeypatch):
    from persam.backbones.mobile_sam import build_mobile_sam

    # An entry of None in sys.modules makes `import` fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "mobile_sam.modeling.tiny_vit_sam", None)
    with pytest.raises(MissingDependencyError, match=r"backbone=mobile_sam.*persam\[mobile-sam\]"):
        build_mobile_sam(checkpoint="random", device="cpu")


def test_missing_dependency_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'persam\[sam2\]'"):
        require("persam_no_such_module", "sam2", "sam2_hiera_t")


# -- EfficientViT-SAM specifics ---------------------------------------------------------------


def test_efficientvit_sam_refuses_other_input_sizes():
    pytest.importorskip("efficientsam")
    from hydra.utils import instantiate

    cfg = compose_backbone(
        "backbone=efficientvit_sam_l0",
        "backbone.checkpoint=random",
        "backbone.encoder_input_size=1024",
    )
    with pytest.raises(Exception) as err:
        instantiate(cfg, device="cpu")
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, InputSizeError)
    assert "backbone.encoder_input_size=1024" in str(cause)
    assert "backbone.encoder_input_size=512" in str(cause)


def test_efficientvit_sam_refuses_vit_fields():
    pytest.importorskip("efficientsam")
    from persam.backbones.efficientvit_sam import build_efficientvit_sam
    from persam.backbones.sam import BackboneError

    with pytest.raises(BackboneError, match=r"not a ViT.*encoder_depth.*backbone.variant"):
        build_efficientvit_sam(checkpoint="random", device="cpu", encoder_depth=12)


def test_efficientvit_sam_refuses_a_mobile_sam_checkpoint(tmp_path):
    pytest.importorskip("efficientsam")
    from persam.backbones.efficientvit_sam import build_efficientvit_sam

    path = tmp_path / "mobile_sam.pt"
    torch.save({"image_encoder.layers.0.blocks.0.conv1.c.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as err:
        build_efficientvit_sam(checkpoint=str(path), device="cpu")
    msg = str(err.value)
    assert "mobile_sam.pt" in msg and "TinyViT" in msg and "backbone=mobile_sam" in msg
    assert "efficientvit_sam_l0.pt" in msg  # where to get the right one


def test_missing_efficientsam_names_the_extra(monkeypatch):
    from persam.backbones.efficientvit_sam import build_efficientvit_sam

    monkeypatch.setitem(sys.modules, "efficientsam.models.efficientvit.sam", None)
    with pytest.raises(MissingDependencyError, match=r"persam\[efficientvit-sam\]"):
        build_efficientvit_sam(checkpoint="random", device="cpu")


# -- SAM 2 specifics -----------------------------------------------------------------------


@pytest.mark.slow
def test_sam2_leaves_no_global_hydra():
    """Importing `sam2` initialises Hydra globally; building it through persam does not."""
    need_sam2()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hydra.core.global_hydra import GlobalHydra as G;"
            "from persam.backbones.sam2 import sam2_class; sam2_class();"
            "print(G.instance().is_initialized())",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_sam2_location_prior_maps_the_square_resize_back():
    """SAM 2 stretches the image to a square: the similarity map's arg-max must land on the
    image pixel whose features were used (not on SAM's letterboxed position)."""
    need_sam2()
    from persam.model import location_prior

    sam = sam2_model()
    image, _ = scene(3, size=(60, 150))  # far from square
    predictor = Encoder(sam).set_image(image)
    assert predictor.input_size == (1024, 1024)
    feats = predictor.features[0]
    cell = (48, 10)  # (row, col) on the 64 x 64 grid
    sim = location_prior.similarity_map(predictor, feats[:, cell[0], cell[1]])
    assert sim.shape == image.shape[:2]
    y, x = np.unravel_index(int(sim.argmax()), sim.shape)
    # the cell's centre in image pixels under a square stretch
    assert abs(y - (cell[0] + 0.5) * 60 / 64) <= 60 / 64 + 1
    assert abs(x - (cell[1] + 0.5) * 150 / 64) <= 150 / 64 + 1


@pytest.mark.slow
def test_sam2_cache_key_includes_the_no_memory_embedding():
    """SAM 2's embedding adds `no_mem_embed` (outside its image encoder) to the last level."""
    need_sam2()
    sam = sam2_model()
    before = Encoder(sam).fingerprint
    sam.no_mem_embed.data += 1
    assert Encoder(sam).fingerprint != before


def test_sam2_refuses_a_vit_checkpoint(tmp_path):
    need_sam2()
    from persam.backbones.sam2 import build_sam2

    path = tmp_path / "sam_vit_tiny.pth"
    vit = build_sam(name="tiny", checkpoint="random", device="cpu", **SMALL_VIT)
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_sam2(checkpoint=str(path), device="cpu")
    msg = str(err.value)
    assert "sam_vit_tiny.pth" in msg and "SAM ViT" in msg and "sam2.1_hiera_tiny.pt" in msg


def test_missing_sam2_names_the_extra(monkeypatch):
    from persam.backbones.sam2 import build_sam2

    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(MissingDependencyError, match=r"persam\[sam2\]"):
        build_sam2(checkpoint="random", device="cpu")


# -- Hugging Face SamModel specifics ---------------------------------------------------------


def _sa_checkpoint(tmp_path, seed=3):
    sam = build_sam(name="tiny", checkpoint="random", seed=seed, device="cpu", **SMALL_VIT)
    path = tmp_path / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def test_hf_sam_reads_segment_anything_checkpoints_and_guides_like_it(tmp_path):
    """Through the key map, HF's SamModel is segment_anything's Sam: same features, and the same
    PerSAM output with every component on (official guided attention and semantic prompt)."""
    pytest.importorskip("transformers")
    from persam.backbones.hf_sam import build_hf_sam

    sa, path = _sa_checkpoint(tmp_path)
    hf = build_hf_sam(checkpoint=str(path), device="cpu", **SMALL_VIT)
    ref, ref_mask = scene(0)
    image, _ = scene(1)
    preds = []
    for sam in (sa, hf):
        method = PerSAM(sam, Encoder(sam), refine_steps=0)
        preds.append(method.segment(image, method.learn(ref, ref_mask)))
    a, b = preds
    assert np.array_equal(a.coords, b.coords)
    np.testing.assert_allclose(a.first_logits, b.first_logits, atol=1e-3)
    assert (a.first_mask == b.first_mask).mean() > 0.999


def test_hf_builtin_attention_similarity_is_not_persams_form(tmp_path):
    """HF's `attention_similarity` is a bias before the softmax; PerSAM's guided attention adds
    the similarity to the probabilities: the two give different decoder outputs."""
    pytest.importorskip("transformers")
    from segment_anything import SamPredictor

    from persam.backbones.hf_sam import build_hf_sam
    from persam.model.decoder import personalize
    from persam.model.guided_attention import attention_map

    _, path = _sa_checkpoint(tmp_path)
    hf = build_hf_sam(checkpoint=str(path), device="cpu", **SMALL_VIT)
    predictor = SamPredictor(hf)
    predictor.set_image(scene(1)[0])
    sim = torch.linspace(-1, 1, 72 * 96).reshape(72, 96)
    guidance = attention_map(sim, tuple(predictor.features.shape[-2:]))
    point = dict(point_coords=np.array([[40, 30]]), point_labels=np.array([1]))
    with personalize(hf).guide(attn_sim=guidance):
        _, _, ours = predictor.predict(multimask_output=False, **point)
    _, _, plain = predictor.predict(multimask_output=False, **point)
    coords = torch.as_tensor(predictor.transform.apply_coords(point["point_coords"], (72, 96)))
    with torch.no_grad():
        builtin = hf.hf_model(
            image_embeddings=predictor.features,
            input_points=coords[None, None].float(),
            input_labels=torch.ones(1, 1, 1, dtype=torch.int),
            multimask_output=False,
            attention_similarity=guidance,
        ).pred_masks[0, 0]
    assert not np.allclose(ours, plain, atol=1e-4)
    assert not np.allclose(builtin.numpy(), plain, atol=1e-4)
    assert not np.allclose(builtin.numpy(), ours, atol=1e-4)


def test_hf_sam_refuses_a_mobile_sam_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    from persam.backbones.hf_sam import build_hf_sam

    path = tmp_path / "mobile_sam.pt"
    torch.save({"image_encoder.layers.0.blocks.0.conv1.c.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as err:
        build_hf_sam(checkpoint=str(path), device="cpu", **SMALL_VIT)
    msg = str(err.value)
    assert "mobile_sam.pt" in msg and "TinyViT" in msg and "backbone=mobile_sam" in msg


def test_missing_transformers_names_the_extra(monkeypatch):
    from persam.backbones.hf_sam import build_hf_sam

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"backbone=hf_sam.*persam\[hf-sam\]"):
        build_hf_sam(checkpoint="random", device="cpu", **SMALL_VIT)


# -- end to end: the acceptance command --------------------------------------------------------

# backbone config -> (the module its extra provides, overrides that keep the test fast)
E2E = {
    "mobile_sam": ("mobile_sam", []),
    "hf_sam": ("transformers", [f"backbone.{k}={v}" for k, v in SMALL_VIT.items()]),
    "efficientvit_sam_l0": ("efficientsam", []),
    "sam2_hiera_t": ("sam2", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(E2E))
@pytest.mark.parametrize("method", ["persam", "persam_f"])
def test_run_with_random_weights_writes_masks_and_metrics(backbone, method, tmp_path):
    import importlib.util

    module, overrides = E2E[backbone]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    import json

    from helpers import run_app, write_object

    write_object(tmp_path / "PerSeg", "thing", n=2)
    out = tmp_path / "out"
    args = [
        f"backbone={backbone}",
        "backbone.checkpoint=random",
        "data=perseg",
        f"data.root={tmp_path / 'PerSeg'}",
        "logger=none",
        f"hydra.run.dir={out}",
        f"method={method}",
        *overrides,
    ]
    if method == "persam_f":
        args += ["method.scale_weights.steps=20", "method.scale_weights.fused=eager"]
    proc = run_app(args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == backbone and metrics["random_weights"] is True
    assert metrics["n_failed"] == 0
    assert list((out / "masks" / "thing").glob("*.png")), "no mask written"
    assert "RANDOM weights" in log


# -- backbone.checkpoint=random for SAM's own architectures ----------------------------------


def test_random_checkpoint_builds_vit_b_with_a_warning(caplog):
    from hydra.utils import instantiate

    cfg = compose_backbone("backbone=vit_b", "backbone.checkpoint=random")
    with caplog.at_level("WARNING", logger="persam.backbones.sam"):
        sam = instantiate(cfg, device="cpu")
    assert len(sam.image_encoder.blocks) == 12 and not sam.training
    assert "RANDOM weights" in caplog.text and "meaningless" in caplog.text
