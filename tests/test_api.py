"""The public Python API (`persam.build_sam`, `persam.PerSAM`, `persam.PerSAMF`): every form of
an image and a mask gives the command line's masks on the golden PerSeg objects, and the README's
first python block runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_in_process
from PIL import Image

import persam

ROOT = Path(__file__).resolve().parents[1]
OBJECT = "duck_toy"


def _mask_forms(path: Path) -> dict:
    """One PerSeg annotation (a palette PNG, red 128) in every form a user may hold it."""
    indices = np.array(Image.open(path))
    fg = indices != 0
    red = np.zeros((*fg.shape, 3), np.uint8)
    red[fg] = (128, 0, 0)
    return {
        "path": path,
        "str path": str(path),
        "PIL": Image.open(path),
        "2-D bool": fg,
        "0/1": fg.astype(np.uint8),
        "0/255": fg.astype(np.uint8) * 255,
        "palette indices": indices,
        "RGB 0/255": np.repeat(fg[..., None], 3, axis=-1).astype(np.uint8) * 255,
        "RGBA 0/255": np.dstack([np.repeat(fg[..., None], 3, axis=-1) * 255, fg * 255]).astype(
            np.uint8
        ),
        "PerSeg red 128": red,
    }


@pytest.fixture(scope="module")
def cli_masks(golden, tmp_path_factory):
    """The masks `python -m persam.run data=perseg` writes for the golden duck: `cli_masks(method)`
    (each method's run made once, when first asked for)."""
    runs: dict[str, dict] = {}

    def masks(method: str) -> dict:
        if method not in runs:
            run_dir = tmp_path_factory.mktemp(method)
            summary = run_in_process(
                [
                    f"method={method}",
                    "data=perseg",
                    f"data.root={golden / 'perseg-mini'}",
                    f"data.objects=[{OBJECT}]",
                    "logger=none",
                    "overlays=false",
                    "progress=false",
                ],
                run_dir,
            )
            assert summary["complete"]
            runs[method] = {
                n: cv2.imread(str(run_dir / "masks" / OBJECT / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
                > 0
                for n in ("01", "02")
            }
        return runs[method]

    return masks


@pytest.fixture(scope="module")
def sam():
    return persam.build_sam("embedded")


# PerSAM-F: two fits and the run's: in `make test`, not in the edit loop's -m "not slow"
@pytest.mark.parametrize("method", ["persam", pytest.param("persam_f", marks=pytest.mark.slow)])
def test_every_mask_form_gives_the_cli_masks(golden, cli_masks, sam, method):
    """Every form becomes the same annotation through `as_annotation`, the conversion `learn`
    applies for both classes; learned and segmented, forms of each kind give the CLI's masks
    (PerSAM: a path, a PIL image, 2-D bool, PerSeg's red 3-D array; PerSAM-F, a 1000-step fit
    a form: two)."""
    from persam.data.inputs import as_annotation

    images = golden / "perseg-mini" / "Images" / OBJECT
    model = persam.PerSAM(sam) if method == "persam" else persam.PerSAMF(sam)
    reference = np.array(Image.open(images / "00.jpg"))
    forms = _mask_forms(golden / "perseg-mini" / "Annotations" / OBJECT / "00.png")
    one = as_annotation(forms["path"], reference.shape)
    for form, mask in forms.items():
        assert np.array_equal(as_annotation(mask, reference.shape), one), form
    kept = (
        ("path", "PIL", "2-D bool", "PerSeg red 128") if method == "persam" else ("PIL", "2-D bool")
    )
    forms = {k: forms[k] for k in kept}
    for form, mask in forms.items():
        target = model.learn(reference, mask)
        for n in ("01", "02"):
            got = model.segment(images / f"{n}.jpg", target).mask
            expected = cli_masks(method)[n]
            assert got.dtype == bool and got.shape == expected.shape
            assert np.array_equal(got, expected), f"{method}, mask as {form}, image {n}"


def test_every_image_form_gives_the_uint8_images_mask(golden, sam):
    images = golden / "perseg-mini" / "Images" / OBJECT
    model = persam.PerSAM(sam)
    target = model.learn(
        images / "00.jpg", golden / "perseg-mini" / "Annotations" / OBJECT / "00.png"
    )
    rgb = np.array(Image.open(images / "01.jpg"))
    expected = model.segment(rgb, target).mask
    forms = {
        "path": images / "01.jpg",
        "PIL": Image.open(images / "01.jpg"),
        "float32 0..1": rgb.astype(np.float32) / 255,
        "float64 0..255": rgb.astype(np.float64),
        "RGBA": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,
    }
    for form, image in forms.items():
        assert np.array_equal(model.segment(image, target).mask, expected), form


def test_images_that_are_not_an_8_bit_picture_are_refused(sam):
    model = persam.PerSAM(sam)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="whole 8-bit values"):
        model.segment(rng.random((64, 64, 3)).astype(np.float32) * 0.5 + 0.001, None)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB"):
        model.segment(np.zeros((64, 64, 5), np.uint8), None)
    with pytest.raises(ValueError, match="boolean"):
        model.segment(np.zeros((64, 64, 3), bool), None)
    with pytest.raises(TypeError, match="a path, a PIL image"):
        model.segment(42, None)


def test_k_references_as_lists(golden, sam):
    images = golden / "perseg-mini" / "Images" / OBJECT
    masks = golden / "perseg-mini" / "Annotations" / OBJECT
    model = persam.PerSAM(sam)
    target = model.learn(
        [images / "00.jpg", images / "01.jpg"], [masks / "00.png", masks / "01.png"]
    )
    assert target.shots == 2


def test_the_classes_defaults_are_the_method_configs():
    from hydra import compose, initialize_config_dir

    from persam.conf import CONFIG_DIR

    for cls, name in ((persam.PerSAM, "persam"), (persam.PerSAMF, "persam_f")):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", [f"method={name}"]).method
        model = cls.__new__(cls)
        defaults = cls.Options()
        for key, value in cfg.items():
            if key in ("_target_",):
                continue
            if key == "name":
                assert cls.name == value
                continue
            got = getattr(defaults, key)
            got = dict(vars(got)) if hasattr(got, "__dataclass_fields__") else got
            expect = dict(value) if hasattr(value, "items") else value
            assert str(got) == str(expect) or got == expect, (name, key, got, expect)
        del model


def test_build_sam_embedded_gives_no_warning(caplog):
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            sam = persam.build_sam("embedded")
    assert sam.image_encoder.img_size == 256
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_readme_python_block_runs_as_written_from_an_empty_folder(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README.md has no ```python block"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 12
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the README's example prints its result"
