"""The interactive demo: its logic (persam.demo.core) on the embedded SAM, and the real page in a
headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against `persam.run`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_app
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from persam.conf import CONFIG_DIR
from persam.data import build_dataset
from persam.data.perseg import foreground, read_annotation, read_image
from persam.demo import core
from persam.demo.__main__ import build_demo

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("PERSAM_CHROMIUM", "/usr/bin/chromium"))
# Flags that keep Chromium off the network (no lookups of Google's hosts) in a sandboxed CI.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _compose(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("demo", overrides=overrides or [])


@pytest.fixture(scope="module")
def demo(tmp_path_factory, session_cache):
    cfg = _compose([f"paths.cache_dir={session_cache}"])
    return build_demo(cfg, tmp_path_factory.mktemp("demo-run"))


@pytest.fixture(scope="module")
def example(demo):
    """The bundled example: reference image + annotation, test images with their ground truth."""
    ex = demo.example
    ref = read_image(ex.reference_image)
    ann = read_annotation(ex.reference_annotation, ref.shape)
    tests = [(s, read_image(p)) for s, p in ex.images.items() if s != ex.reference]
    truth = {s: foreground(read_annotation(ex.annotations[s], img.shape)) for s, img in tests}
    return ref, ann, tests, truth


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ----------------------------------------------------------------------------- config


def test_demo_config_reuses_the_groups():
    cfg = _compose()
    assert cfg.host == "127.0.0.1" and cfg.port == 7860
    assert cfg.backbone.name == "embedded"
    assert set(cfg.methods) == {"persam", "persam_f", "gf_sam"}
    assert cfg.methods.persam._target_ == "persam.model.method.PerSAM"
    assert cfg.methods.gf_sam._target_ == "persam.model.gf_sam.GFSAM"
    # GF-SAM on SAM's own features here (no DINOv2 ships), DINOv2 from the command line
    assert cfg.features.name == "sam" and cfg.methods.gf_sam.empty_reference == "raise"
    assert _compose(["features=dinov2"]).features.name == "dinov2_vitl14"
    assert cfg.methods.persam_f.scale_weights.steps == 1000
    assert cfg.example._target_ == "persam.data.synthetic.synthetic_dataset"
    cfg = _compose(["port=8123", "backbone=tiny", "methods.persam_f.scale_weights.steps=7"])
    assert cfg.port == 8123 and cfg.backbone.name == "tiny"
    assert core.method_options(cfg.methods, "persam_f")["fit_steps"] == 7


def test_unknown_start_method_stops_with_the_choices(tmp_path):
    cfg = _compose([f"paths.cache_dir={tmp_path}", "start_method=persam_x"])
    with pytest.raises(SystemExit, match="start_method=persam_x is not one of .*persam_f"):
        build_demo(cfg, tmp_path)


def test_method_options_follow_the_method_configs():
    cfg = _compose()
    persam = core.method_options(cfg.methods, "persam")
    assert persam == {
        "positive_point": True,
        "negative_point": True,
        "guided_attention": True,
        "semantic_prompt": True,
        "refine_steps": 2,
        "target_pooling": "mean",
        "fit_steps": None,
        **dict.fromkeys(core.GF_SAM_SWITCHES),
    }
    gf_sam = core.method_options(cfg.methods, "gf_sam")
    assert {k: gf_sam[k] for k in core.GF_SAM_SWITCHES} == dict.fromkeys(core.GF_SAM_SWITCHES, True)
    assert all(gf_sam[k] is None for k in (*core.SWITCHES, "refine_steps", "fit_steps"))
    persam_f = core.method_options(cfg.methods, "persam_f")
    assert persam_f["negative_point"] is False and persam_f["guided_attention"] is False
    assert persam_f["target_pooling"] == "max_mean" and persam_f["fit_steps"] == 1000


def test_example_is_drawn_from_the_synthetic_world(demo):
    ex = demo.example
    assert ex.reference == "00" and len(ex.images) == 4
    assert ex.reference_image.is_file() and ex.reference_annotation.is_file()
    assert "synthetic" in ex.reference_image.parts and ex.name.startswith("obj00_")


# ----------------------------------------------------------------------------- inputs


def test_unreadable_upload_is_named(tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(core.DemoInputError, match="reference image 'holiday.jpg' cannot be read"):
        core.read_upload(bad, "reference image")
    with pytest.raises(core.DemoInputError, match="No reference image"):
        core.read_upload(None, "reference image")
    with pytest.raises(core.DemoInputError, match="test image 'holiday.jpg'"):
        core.read_test_images([bad])
    with pytest.raises(core.DemoInputError, match="No test images"):
        core.read_test_images([])


def test_uploaded_mask_is_read_as_persam_run_reads_it(tmp_path):
    image = np.zeros((96, 128, 3), np.uint8)
    mask = np.zeros((96, 128, 3), np.uint8)
    cv2.circle(mask, (60, 40), 15, (0, 0, 128), -1)  # a PerSeg annotation (BGR)
    cv2.imwrite(str(tmp_path / "00.png"), mask)
    got = core.mask_from_upload(tmp_path / "00.png", image)
    np.testing.assert_array_equal(got, read_annotation(tmp_path / "00.png", image.shape))
    cv2.imwrite(str(tmp_path / "small.png"), mask[:40, :50])
    with pytest.raises(core.DemoInputError, match=r"'small.png' is 50x40 .* image is 128x96"):
        core.mask_from_upload(tmp_path / "small.png", image)
    with pytest.raises(core.DemoInputError, match="No reference mask uploaded"):
        core.mask_from_upload(None, image)


def test_masks_made_in_the_page_encode_like_a_perseg_file(tmp_path):
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    ann = np.zeros((30, 40, 3), np.uint8)
    ann[mask] = (0, 0, 128)
    cv2.imwrite(str(tmp_path / "m.png"), ann)
    np.testing.assert_array_equal(core.annotation_from_mask(mask), read_image(tmp_path / "m.png"))


def test_painted_layers_become_the_mask():
    image = np.zeros((30, 40, 3), np.uint8)
    layer = np.zeros((30, 40, 4), np.uint8)
    layer[3:9, 4:12] = (255, 0, 0, 255)
    second = np.zeros((30, 40, 4), np.uint8)
    second[20:25, 30:35, 3] = 80
    ann = core.mask_from_editor({"background": image, "layers": [layer, second]}, image)
    expected = np.zeros((30, 40), bool)
    expected[3:9, 4:12] = True
    expected[20:25, 30:35] = True
    np.testing.assert_array_equal(ann[..., 0] > 0, expected)
    with pytest.raises(core.DemoInputError, match="Nothing is painted"):
        core.mask_from_editor({"background": image, "layers": []}, image)
    with pytest.raises(core.DemoInputError, match="painted mask is 40x30 .* image is 20x10"):
        core.mask_from_editor({"layers": [layer]}, image[:10, :20])


def test_clicked_point_gives_sams_mask_of_the_object(demo, example):
    ref, ann, _, _ = example
    fg = ann[..., 0] > 0
    dist = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    mask = core.mask_from_points(demo.encoder, ref, [(int(x), int(y), 1)])
    assert mask.shape == fg.shape and mask[y, x]
    assert _iou(mask, fg) > 0.5  # measured 0.67 with the embedded SAM
    with pytest.raises(core.DemoInputError, match="No points"):
        core.mask_from_points(demo.encoder, ref, [])


def test_duplicate_test_image_names_stay_apart(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "01.png"), np.full((8, 8, 3), 7, np.uint8))
    names = [n for n, _ in core.read_test_images([tmp_path / "a/01.png", tmp_path / "b/01.png"])]
    assert names == ["01", "01_1"]


# ----------------------------------------------------------------------------- method


def test_persam_in_the_page_is_the_configured_method(demo, example):
    ref, ann, tests, truth = example
    method = core.build_method(demo.methods, "persam", demo.sam, demo.encoder, demo.trainer)
    seen = []
    result = core.run_method(method, ref, ann, tests, lambda f, d: seen.append((f, d)))
    assert seen[0][0] == 0.0 and seen[-1] == (1.0, "done")
    target = method.learn(ref, ann)
    for item, (name, image) in zip(result.images, tests, strict=True):
        direct = method.segment(image, target)
        np.testing.assert_array_equal(item.mask, direct.mask)
        np.testing.assert_array_equal(item.prediction.coords, direct.coords)
        assert item.similarity.shape == image.shape[:2]
        # the positive point is the arg-max of the similarity map shown
        x, y = item.prediction.coords[0]
        assert float(item.similarity[y, x]) == pytest.approx(float(item.similarity.max()))
        panels = item.panels()
        assert [c.split(": ")[1].split(" (")[0] for _, c in panels] == [
            "final mask",
            "similarity, points",
            "step 0",
            "step 1",
            "step 2",
        ]
        assert all(p.shape == image.shape and p.dtype == np.uint8 for p, _ in panels)
        assert _iou(item.mask, truth[name]) > 0.5  # measured 0.66-0.82
    text = core.summary(result)
    assert "persam" in text and all(name in text for name, _ in tests)


def test_component_switches_reach_the_method(demo, example):
    ref, ann, tests, _ = example
    options = {"negative_point": False, "refine_steps": 0, "guided_attention": False}
    method = core.build_method(
        demo.methods, "persam", demo.sam, demo.encoder, demo.trainer, options
    )
    assert (method.negative_point, method.refine_steps, method.guided_attention) == (
        False,
        0,
        False,
    )
    item = core.run_method(method, ref, ann, tests[:1]).images[0]
    assert item.prediction.labels.tolist() == [1] and item.prediction.attn_sim is None
    np.testing.assert_array_equal(item.mask, item.prediction.first_mask)
    assert len(item.panels()) == 3
    with pytest.raises(core.DemoInputError, match="refine_steps must be 0, 1 or 2"):
        core.build_method(
            demo.methods, "persam", demo.sam, demo.encoder, options={"refine_steps": 3}
        )
    with pytest.raises(core.DemoInputError, match="Unknown method 'persam_x'"):
        core.build_method(demo.methods, "persam_x", demo.sam, demo.encoder)


@pytest.mark.parametrize("name", ["persam", "gf_sam"])
def test_empty_reference_mask_is_refused(demo, example, name):
    ref, ann, tests, _ = example
    method = core.build_method(demo.methods, name, demo.sam, demo.encoder, features=demo.features)
    with pytest.raises(core.DemoInputError, match="Unusable reference mask: .*empty"):
        core.run_method(method, ref, np.zeros_like(ann), tests)


def test_gf_sam_in_the_page_is_the_configured_method(demo, example):
    """GF-SAM in the page: the configured `GFSAM` on the demo's features; masks equal to the
    method's own; its probability map, selected points and masks as panels; its switches."""
    from persam.model.gf_sam import GFSAM

    ref, ann, tests, truth = example
    method = core.build_method(
        demo.methods, "gf_sam", demo.sam, demo.encoder, demo.trainer, features=demo.features
    )
    assert isinstance(method, GFSAM) and method.features is demo.features
    result = core.run_method(method, ref, ann, tests)
    target = method.learn(ref, ann)
    for item, (name, image) in zip(result.images, tests, strict=True):
        direct = method.segment(image, target)
        np.testing.assert_array_equal(item.mask, direct.mask)
        np.testing.assert_array_equal(item.prediction.labels, direct.labels)
        assert item.similarity.shape == image.shape[:2]
        assert float(item.similarity.max()) == pytest.approx(float(direct.prob.max()), abs=1e-6)
        captions = [c.split(": ")[1] for _, c in item.panels()]
        selected = int(direct.labels.sum())
        assert captions == [
            "final mask",
            "probability, points (green selected, red not)",
            f"{selected} selected mask(s)",
        ]
        assert all(p.shape == image.shape and p.dtype == np.uint8 for p, _ in item.panels())
        assert _iou(item.mask, truth[name]) > 0.3  # measured 0.41-0.59 (SAM's features)
    text = core.summary(result)
    assert "gf_sam" in text and "selected" in text and "component(s)" in text
    assert result.target.fit is None  # no PerSAM-F weights or loss shown
    off = {"mask_growth": False, "point_consistency": False, "negative_point": False}
    method = core.build_method(demo.methods, "gf_sam", demo.sam, demo.encoder, options=off)
    assert (method.mask_growth, method.point_consistency, method.negative_filter) == (
        False,
        False,
        True,
    )


def test_persam_f_fit_progress_weights_loss_and_zip(demo, example, tmp_path):
    ref, ann, tests, _ = example
    reports = []
    method = core.build_method(
        demo.methods,
        "persam_f",
        demo.sam,
        demo.encoder,
        demo.trainer,
        {"fit_steps": 40},
        fit_report=lambda step, total: reports.append((step, total)),
    )
    result = core.run_method(method, ref, ann, tests)
    assert reports == [(20, 40), (40, 40)]
    weights = result.target.mask_weights
    assert weights.shape == (3,) and weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(result.losses) == 40 and result.losses[-1] < result.losses[0]
    table = core.weights_table(weights)
    assert table.count("| mask ") == 3 and f"{weights[2]:.4f}" in table
    fig = core.loss_figure(result.losses)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines[0].get_xdata()) == 40
    assert "step 0 (weighted mask)" in result.images[0].panels(persam_f=True)[2][1]
    with pytest.raises(core.DemoInputError, match="fit steps must be at least 1"):
        core.build_method(
            demo.methods, "persam_f", demo.sam, demo.encoder, options={"fit_steps": 0}
        )

    archive = core.write_results(result, tmp_path / "r")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == [f"masks/{name}.png" for name, _ in tests]
        for item in result.images:
            png = cv2.imdecode(np.frombuffer(zf.read(f"masks/{item.name}.png"), np.uint8), -1)
            np.testing.assert_array_equal(png > 0, item.mask)
            assert set(np.unique(png)) <= {0, 255}


# ----------------------------------------------------------------------------- the page


def test_page_errors_are_messages_not_tracebacks():
    import gradio as gr

    from persam.demo.app import _page_errors

    @_page_errors
    def bad_input():
        raise core.DemoInputError("The reference mask is 40x30 but the image is 128x96.")

    @_page_errors
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(gr.Error) as err:
        bad_input()
    assert err.value.message == "The reference mask is 40x30 but the image is 128x96."
    with pytest.raises(gr.Error) as err:
        broken()
    assert err.value.message.startswith("Unexpected error (RuntimeError: boom)")


def test_page_has_every_control(demo):
    from persam.demo.app import build_app

    app = build_app(demo)
    ids = {b.elem_id for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert {
        "ref-image",
        "ref-mask",
        "editor",
        "points-image",
        "load-example",
        "test-images",
        "method",
        *core.SWITCHES,
        *core.GF_SAM_SWITCHES,
        "fit-steps",
        "run",
        "status",
        "results",
        "weights",
        "loss",
        "masks-zip",
    } <= ids


def _require_browser():
    """Chromium + Playwright, or skip; PERSAM_REQUIRE_BROWSER=1 (.ci/run) makes it a failure."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.is_file():
        missing = f"{CHROMIUM} not found (apt-get install chromium)"
    if missing:
        if os.environ.get("PERSAM_REQUIRE_BROWSER") == "1":
            pytest.fail(missing + "; PERSAM_REQUIRE_BROWSER=1 makes this a failure")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_served(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"persam.demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"persam.demo did not serve {url} in {timeout} s:\n{log.read_text()[-3000:]}")


# The client went away mid-request (the test closes the browser while Gradio may still be
# streaming an upload or an event): uvicorn logs it with a traceback; nothing failed on the server.
_CLIENT_GONE = ("starlette.requests.ClientDisconnect", "uvicorn.protocols.utils.ClientDisconnected")


def _server_errors(log: str) -> list[str]:
    """The end of each traceback in the server's log, but for a client disconnecting."""
    errors = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()
        # the exception line: the first unindented line after the frames
        end = next((i for i, ln in enumerate(lines[1:], 1) if ln and not ln[0].isspace()), None)
        if end is None or not lines[end].startswith(_CLIENT_GONE):
            stop = len(lines) if end is None else end + 1
            errors.append("\n".join(lines[max(0, stop - 7) : stop]))
    return errors


@pytest.mark.slow
def test_page_in_a_real_browser_matches_persam_run(tmp_path):
    """The real page in headless Chromium: bad input gives its message; a reference + mask +
    two test images uploaded give PerSAM masks equal to `persam.run`'s on the same files;
    PerSAM-F shows its weights and loss; GF-SAM its own switches and panels; clicked points and
    painting make reference masks."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    # One PerSeg object from the synthetic world: the files the page and persam.run both read.
    cache = tmp_path / "cache"
    obj = next(iter(build_dataset(_compose([f"paths.cache_dir={cache}"]).example)))
    data = tmp_path / "perseg"
    stems = ("00", "01", "02")
    for kind, src in (("Images", obj.images), ("Annotations", obj.annotations)):
        (data / kind / "thing").mkdir(parents=True)
        for stem in stems:
            shutil.copy(src[stem], data / kind / "thing" / Path(src[stem]).name)
    image, mask = data / "Images/thing/00.jpg", data / "Annotations/thing/00.png"
    tests = [data / f"Images/thing/{stem}.jpg" for stem in stems[1:]]
    empty, small = tmp_path / "empty.png", tmp_path / "small.png"
    cv2.imwrite(str(empty), np.zeros(read_image(image).shape, np.uint8))
    cv2.imwrite(str(small), read_image(mask)[:30, :40])

    run = tmp_path / "run"
    proc = run_app(
        ["data=perseg", f"data.root={data}", "logger=none", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env={"PERSAM_CACHE_DIR": str(cache)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["objects"]["thing"]["status"] == "ok"

    port = _free_port()
    log = tmp_path / "demo.log"
    # its own cache: the page computes its embeddings itself, it does not read persam.run's
    env = {**os.environ, "PERSAM_CACHE_DIR": str(tmp_path / "cache-demo"), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "persam.demo", f"port={port}", f"hydra.run.dir={tmp_path}/d"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_served(url, server, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # CI machines are shared: generous waits (each still fails when nothing happens)
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            page.locator("#ref-image input[type=file]").set_input_files(image)
            page.locator("#test-images input[type=file]").set_input_files(tests)
            # the upload's own event (the reference into the editor and the points image) has
            # finished before the first Segment: Gradio reads the editor's saved background
            expect(page.locator("#ref-view img")).to_be_visible()

            # bad input first: a mask of another size, then an empty one; each gives its
            # message in the page, no traceback
            for bad, message in (
                (small, "The reference mask 'small.png' is 40x30 but the reference image is"),
                (empty, "Unusable reference mask: the reference mask is empty"),
            ):
                page.locator("#ref-mask input[type=file]").set_input_files(bad)
                expect(page.locator(f"#ref-mask [aria-label='{bad.name}']")).to_be_visible()
                page.click("#run")
                expect(page.get_by_text(message).first).to_be_visible(timeout=60_000)
                page.locator("#ref-mask button[aria-label='Clear']").click()
            assert "Traceback" not in page.content()
            page.get_by_role("status").get_by_role("button", name="Close", exact=True).click()
            expect(page.get_by_text("Unusable reference mask")).to_have_count(0)

            # PerSAM on the uploaded reference mask
            page.locator("#ref-mask input[type=file]").set_input_files(mask)
            expect(page.locator("#ref-mask [aria-label='00.png']")).to_be_visible()
            for path in tests:
                expect(page.locator(f"#test-images [aria-label='{path.name}']")).to_be_visible()
            page.click("#run")
            link = page.locator("#masks-zip a").first
            expect(link).to_be_visible(timeout=120_000)
            expect(page.locator("#status")).to_contain_text("2 image(s) segmented")
            expect(page.locator("#results img")).to_have_count(10)
            persam_zip = link.get_attribute("href")
            archive = page.request.get(persam_zip).body()

            # PerSAM-F: the switches follow the method; the weights and the loss curve appear
            page.get_by_label("PerSAM-F").check()
            expect(page.locator("#negative_point input")).not_to_be_checked()
            page.locator("#fit-steps input").fill("30")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("fit: 30 steps", timeout=180_000)
            expect(page.locator("#weights")).to_contain_text("mask 2")
            expect(page.locator("#loss")).to_be_visible()
            page.screenshot(path=str(tmp_path / "demo.jpg"), full_page=True, quality=85)
            hrefs = {persam_zip, link.get_attribute("href")}

            # GF-SAM: its switches replace PerSAM's; three panels per image, no fit shown
            page.get_by_label("GF-SAM").check()
            expect(page.locator("#mask_growth input")).to_be_checked()
            expect(page.locator("#negative_point")).to_be_hidden()
            expect(page.locator("#fit-steps")).to_be_hidden()
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("component(s)", timeout=120_000)
            expect(page.locator("#results img")).to_have_count(6)
            expect(page.locator("#weights")).to_be_hidden()
            hrefs.add(link.get_attribute("href"))

            # a reference mask from clicked points (SAM), then one painted in the editor
            page.get_by_label("PerSAM (training-free)").check()
            page.get_by_role("tab", name="Click points").click()
            fg = read_annotation(mask)[..., 0] > 0
            dist = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
            y, x = np.unravel_index(int(dist.argmax()), dist.shape)
            shown = page.locator("#points-image img")
            box = shown.bounding_box()
            shown.click(
                position={"x": x * box["width"] / fg.shape[1], "y": y * box["height"] / fg.shape[0]}
            )
            expect(page.get_by_label("clicked points (SAM)")).to_be_checked(timeout=60_000)
            page.get_by_role("tab", name="Paint").click()
            canvas = page.locator("#editor canvas").first.bounding_box()
            cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 30, cy + 20, steps=8)
            page.mouse.up()
            for source in ("clicked points (SAM)", "painted in the editor"):
                page.get_by_label(source).check()
                page.click("#run")
                expect(link).not_to_have_attribute(
                    "href", re.compile("|".join(map(re.escape, hrefs))), timeout=120_000
                )
                hrefs.add(link.get_attribute("href"))
            expect(page.locator("#status")).to_contain_text("2 image(s) segmented")

            # the bundled example fills the reference, its mask and three test images
            page.click("#load-example")
            for name in ("01.jpg", "02.jpg", "03.jpg"):
                expect(page.locator(f"#test-images [aria-label='{name}']")).to_be_visible()
            expect(page.get_by_label("uploaded mask")).to_be_checked()
            assert "Traceback" not in page.content()
            browser.close()
        # the page works offline: everything it loaded came from the demo's own server
        outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
        assert requested and not outside, outside
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # never left running: killed and reaped
            server.kill()
            server.wait()
            raise
    # no unexpected error on the server either (the browser closing mid-request is expected)
    errors = _server_errors(log.read_text())
    assert not errors, errors
    shot = os.environ.get("PERSAM_DEMO_SCREENSHOT")
    if shot:
        shutil.copy(tmp_path / "demo.jpg", shot)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.namelist() == ["masks/01.png", "masks/02.png"]
        for stem in stems[1:]:
            ours = cv2.imdecode(np.frombuffer(zf.read(f"masks/{stem}.png"), np.uint8), -1)
            expected = cv2.imread(str(run / f"masks/thing/{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert ours.shape == expected.shape and (ours > 0).any()
            np.testing.assert_array_equal(ours, expected)
    # every request wrote its masks into the demo's run folder
    assert len(list((tmp_path / "d" / "results").glob("*/masks.zip"))) == 5
