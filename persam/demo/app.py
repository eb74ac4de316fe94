"""The Gradio page: components and event wiring around `persam.demo.core` (all logic is there).

`Demo` holds what the page needs (the SAM backbone, its cached encoder, the method configs, the
trainer options, the example object, the results folder); `build_app(demo)` returns the
`gr.Blocks`. Bad input shows its `DemoInputError` message in the page (`gr.Error`), never a
traceback; an unexpected error is logged with its traceback and named in the page.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from persam.data.perseg import ObjectSet  # noqa: E402
from persam.demo import core  # noqa: E402
from persam.model.encoder import Encoder  # noqa: E402

log = logging.getLogger(__name__)

MASK_SOURCES = [
    ("uploaded mask", "upload"),
    ("painted in the editor", "paint"),
    ("clicked points (SAM)", "points"),
]
METHOD_LABELS = {
    "persam": "PerSAM (training-free)",
    "persam_f": "PerSAM-F (fits 2 weights)",
    "gf_sam": "GF-SAM (training-free, graph of point masks)",
}


@dataclass
class Demo:
    """What the page works with."""

    sam: Any
    encoder: Encoder
    methods: DictConfig  # name -> conf/method/<name>.yaml
    trainer: Any  # Lightning Trainer factory of the PerSAM-F fit (the `trainer` group)
    results_dir: Path  # one numbered subfolder per segmentation request
    backbone: str = ""
    start_method: str = "persam"
    example: ObjectSet | None = None
    features: Any = None  # GF-SAM's features (the `features` group); None: SAM's own embedding

    def __post_init__(self) -> None:
        self._counter = itertools.count(1)

    def next_results_dir(self) -> Path:
        return Path(self.results_dir) / f"{next(self._counter):03d}-{time.strftime('%H%M%S')}"


def _page_errors(fn):
    """Bad input -> its message in the page; anything else -> logged, named in the page."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except core.DemoInputError as exc:
            raise gr.Error(str(exc), duration=None, print_exception=False) from exc
        except gr.Error:
            raise
        except Exception as exc:
            log.exception("demo: unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Unexpected error ({type(exc).__name__}: {exc}). The server log has the details.",
                duration=None,
                print_exception=False,
            ) from exc

    return wrapper


def _path(value) -> str | None:
    """A `gr.File` value (str path, or an object with `.name`) -> str path or None."""
    if value is None:
        return None
    return str(getattr(value, "name", value))


# Over 80 lines on purpose: one Gradio Blocks page. Its event handlers are closures over the
# page's components (two dozen); split, every piece would pass them all around.
def build_app(demo: Demo) -> gr.Blocks:
    methods = list(demo.methods)
    start = core.method_options(demo.methods, demo.start_method)

    # ----------------------------------------------------------------- handlers
    @_page_errors
    def load_reference(ref_file, mask_file):
        if ref_file is None:
            return None, None, [], None
        image = core.read_upload(_path(ref_file), "reference image")
        editor = {"background": image, "layers": [], "composite": image}
        view = image
        if mask_file is not None:
            try:  # the uploaded mask, if it fits this image
                annotation = core.mask_from_upload(_path(mask_file), image)
                view = core.mask_view(image, annotation[..., 0] > 0)
            except core.DemoInputError:
                pass
        return editor, image, [], view

    def load_example():
        ex = demo.example
        if ex is None:
            raise gr.Error("No example is configured (example=null).", duration=None)
        tests = [str(p) for stem, p in ex.images.items() if stem != ex.reference]
        return str(ex.reference_image), str(ex.reference_annotation), tests, "upload"

    @_page_errors
    def add_point(ref_file, points, label, evt: gr.SelectData):
        image = core.read_upload(_path(ref_file), "reference image")
        x, y = (int(v) for v in evt.index)
        points = [*points, (x, y, 1 if label == "positive" else 0)]
        mask = core.mask_from_points(demo.encoder, image, points)
        coords = np.array([(px, py) for px, py, _ in points]).reshape(-1, 2)
        labels = np.array([lb for _, _, lb in points])
        view = core.mask_view(image, mask, coords, labels)
        return view, points, "points", view

    @_page_errors
    def show_uploaded_mask(ref_file, mask_file):
        if ref_file is None or mask_file is None:
            return gr.update(), gr.update()
        image = core.read_upload(_path(ref_file), "reference image")
        annotation = core.mask_from_upload(_path(mask_file), image)
        return core.mask_view(image, annotation[..., 0] > 0), "upload"

    @_page_errors
    def clear_points(ref_file):
        image = None if ref_file is None else core.read_upload(_path(ref_file), "reference image")
        return image, []

    def method_changed(name):
        opts = core.method_options(demo.methods, name)
        gf_sam = core.is_gf_sam(demo.methods, name)

        def control(key):
            return gr.update(value=opts[key], visible=opts[key] is not None)

        return (
            gr.update(visible=not gf_sam),
            gr.update(visible=gf_sam),
            *(control(k) for k in core.SWITCHES + core.GF_SAM_SWITCHES),
            control("refine_steps"),
            control("target_pooling"),
            control("fit_steps"),
        )

    @_page_errors
    def segment(
        ref_file,
        source,
        mask_file,
        editor,
        points,
        test_files,
        method_name,
        positive,
        negative,
        guided,
        semantic,
        negative_filter,
        mask_growth,
        point_consistency,
        fallback,
        refine_steps,
        pooling,
        fit_steps,
        progress=gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ):
        reference = core.read_upload(_path(ref_file), "reference image")
        if source == "upload":
            annotation = core.mask_from_upload(_path(mask_file), reference)
        elif source == "paint":
            annotation = core.mask_from_editor(editor, reference)
        else:
            annotation = core.annotation_from_mask(
                core.mask_from_points(demo.encoder, reference, points or [])
            )
        tests = core.read_test_images([_path(f) for f in test_files or []])
        options = {
            "positive_point": positive,
            "negative_point": negative,
            "guided_attention": guided,
            "semantic_prompt": semantic,
            "negative_filter": negative_filter,
            "mask_growth": mask_growth,
            "point_consistency": point_consistency,
            "fallback": fallback,
            "refine_steps": None if refine_steps is None else int(refine_steps),
            "target_pooling": pooling,
            "fit_steps": None if fit_steps is None else int(fit_steps),
        }

        def fit_report(step, total):
            progress(step / total, desc=f"fitting the PerSAM-F scale weights: step {step}/{total}")

        method = core.build_method(
            demo.methods,
            method_name,
            demo.sam,
            demo.encoder,
            demo.trainer,
            options,
            fit_report=fit_report,
            features=demo.features,
        )
        result = core.run_method(
            method, reference, annotation, tests, lambda f, d: progress(f, desc=d)
        )
        out_dir = demo.next_results_dir()
        archive = core.write_results(result, out_dir)
        persam_f = result.target.fit is not None
        panels = [p for item in result.images for p in item.panels(persam_f)]
        per_row = len(panels) // len(result.images)
        ref_view = core.mask_view(reference, annotation[..., 0] > 0)
        log.info("demo: %s on %d image(s) -> %s", result.method, len(tests), out_dir)
        return (
            core.summary(result),
            gr.update(value=panels, columns=per_row),
            gr.update(
                value=core.weights_table(result.target.mask_weights) if persam_f else "",
                visible=persam_f,
            ),
            gr.update(
                value=core.loss_figure(result.losses) if persam_f else None, visible=persam_f
            ),
            str(archive),
            ref_view,
        )

    # ----------------------------------------------------------------- layout
    with gr.Blocks(title="PerSAM demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# PerSAM: personalise Segment Anything from one reference\n"
            f"Backbone **{demo.backbone}**. Give a reference image and its mask (upload, paint "
            "or click points), add test images, pick PerSAM, PerSAM-F or GF-SAM and its "
            "components, press **Segment**. Per test image: the final mask, the similarity map "
            "with the positive (green) and negative (red) points, and the masks of steps 0, 1, "
            "2 (GF-SAM: its probability map with the selected points in green, and the masks "
            "it selected)."
        )
        points_state = gr.State([])
        with gr.Row():
            with gr.Column():
                gr.Markdown("## Reference")
                ref_file = gr.File(
                    label="Reference image", file_types=["image"], elem_id="ref-image"
                )
                example_btn = gr.Button(
                    "Load the example (synthetic world)",
                    elem_id="load-example",
                    visible=demo.example is not None,
                )
                source = gr.Radio(
                    MASK_SOURCES, value="upload", label="Reference mask from", elem_id="source"
                )
                with gr.Tab("Upload a mask"):
                    mask_file = gr.File(
                        label="Reference mask (PNG, object pixels non-zero in red)",
                        file_types=["image"],
                        elem_id="ref-mask",
                    )
                with gr.Tab("Paint"):
                    editor = gr.ImageEditor(
                        type="numpy",
                        label="Paint over the object (brush)",
                        sources=[],
                        transforms=[],
                        layers=False,
                        brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"),
                        elem_id="editor",
                    )
                with gr.Tab("Click points"):
                    point_label = gr.Radio(
                        ["positive", "negative"], value="positive", label="Next click is"
                    )
                    points_img = gr.Image(
                        label="Click on the object: SAM makes the mask",
                        interactive=False,
                        elem_id="points-image",
                    )
                    clear_btn = gr.Button("Clear points")
                ref_view = gr.Image(
                    label="Reference mask used", interactive=False, elem_id="ref-view"
                )
            with gr.Column():
                gr.Markdown("## Test images and method")
                test_files = gr.File(
                    label="Test images (several at once)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="test-images",
                )
                method = gr.Radio(
                    [(METHOD_LABELS.get(m, m), m) for m in methods],
                    value=demo.start_method,
                    label="Method",
                    elem_id="method",
                )
                start_gf = core.is_gf_sam(demo.methods, demo.start_method)
                switches, rows = [], []
                for keys, visible in (
                    (core.SWITCHES, not start_gf),
                    (core.GF_SAM_SWITCHES, start_gf),
                ):
                    with gr.Row(visible=visible) as row:
                        switches += [
                            gr.Checkbox(value=bool(start[k]), label=k.replace("_", " "), elem_id=k)
                            for k in keys
                        ]
                    rows.append(row)
                refine = gr.Radio(
                    [0, 1, 2],
                    value=start["refine_steps"],
                    label="cascaded refinement steps",
                    visible=start["refine_steps"] is not None,
                )
                pooling = gr.Radio(
                    ["mean", "max_mean"],
                    value=start["target_pooling"],
                    label="target pooling (location prior)",
                    visible=start["target_pooling"] is not None,
                )
                fit_steps = gr.Number(
                    value=start["fit_steps"],
                    precision=0,
                    minimum=1,
                    label="PerSAM-F fit steps",
                    elem_id="fit-steps",
                    visible=start["fit_steps"] is not None,
                )
                run_btn = gr.Button("Segment", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(
            label="Per test image: final mask | similarity + points | step 0 | step 1 | step 2",
            columns=5,
            height="auto",
            elem_id="results",
        )
        with gr.Row():
            weights = gr.Markdown(visible=False, elem_id="weights")
            loss_plot = gr.Plot(label="PerSAM-F loss", visible=False, elem_id="loss")
        archive = gr.File(label="Masks (zip)", interactive=False, elem_id="masks-zip")

        # ------------------------------------------------------------- events
        ref_file.change(
            load_reference, [ref_file, mask_file], [editor, points_img, points_state, ref_view]
        )
        example_btn.click(load_example, None, [ref_file, mask_file, test_files, source])
        mask_file.change(show_uploaded_mask, [ref_file, mask_file], [ref_view, source])
        points_img.select(
            add_point,
            [ref_file, points_state, point_label],
            [points_img, points_state, source, ref_view],
        )
        clear_btn.click(clear_points, [ref_file], [points_img, points_state])
        method.change(method_changed, [method], [*rows, *switches, refine, pooling, fit_steps])
        run_btn.click(
            segment,
            [
                ref_file,
                source,
                mask_file,
                editor,
                points_state,
                test_files,
                method,
                *switches,
                refine,
                pooling,
                fit_steps,
            ],
            [status, gallery, weights, loss_plot, archive, ref_view],
        )
    return app
