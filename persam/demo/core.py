"""The demo's logic as plain functions (no Gradio here): inputs -> method -> the panels shown.

Everything the page computes goes through the project's own modules: images are read as
`persam.run` reads them (`persam.data.perseg.read_image`), the method is the configured
`persam.model.method.PerSAM` / `PerSAMF` or `persam.model.gf_sam.GFSAM`, the heat map is
`persam.model.location_prior.similarity_map` (GF-SAM: its probability map), the overlays are
`persam.tasks.outputs.overlay` and the masks are written by `persam.tasks.outputs.write_mask`.
Bad input raises `DemoInputError`, whose message is shown in the page as it is.

Shapes: images RGB uint8 (H, W, 3); masks bool (H, W); annotations RGB uint8 (H, W, 3) whose
red channel marks the object (the PerSeg convention that `PerSAM.learn` reads).
"""

from __future__ import annotations

import functools
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from persam.data.perseg import DataError, read_image
from persam.model import location_prior
from persam.model.decoder import decode
from persam.model.encoder import Encoder
from persam.model.gf_sam import GFSAMPrediction
from persam.model.method import EmptyReferenceMask, PerSAM, Prediction, Target
from persam.tasks.outputs import overlay, write_mask

# A mask made in the page becomes the annotation a PerSeg file would give: red 128 on black
# (PerSeg's PNGs are BGR (0, 0, 128)). The value matters: `PerSAM.learn` normalises the
# annotation like an image before resizing it to the feature grid.
ANNOTATION_RED = 128

# The paper's components, as the page's switches (fields of conf/method/*.yaml).
SWITCHES = ("positive_point", "negative_point", "guided_attention", "semantic_prompt")
# GF-SAM's components shown as switches (fields of conf/method/gf_sam.yaml).
GF_SAM_SWITCHES = ("negative_filter", "mask_growth", "point_consistency", "fallback")

# One model in the process, one request on it at a time (the decoder's guidance is state).
MODEL_LOCK = threading.Lock()

ProgressFn = Callable[[float, str], None]


class DemoInputError(ValueError):
    """Input the page cannot use; the message says what is wrong and what to do."""


# ----------------------------------------------------------------------------- inputs


def display_name(path: str | Path) -> str:
    return Path(path).name


def read_upload(path: str | Path | None, role: str) -> np.ndarray:
    """An uploaded image file -> RGB uint8 (H, W, 3), decoded as `persam.run` decodes it."""
    if path is None:
        raise DemoInputError(f"No {role}: upload one (JPEG or PNG) or load the example.")
    try:
        # the browser shows an upload turned as its EXIF tag says: read it the same way
        return read_image(Path(path), exif="apply")
    except DataError as exc:
        raise DemoInputError(
            f"The {role} '{display_name(path)}' cannot be read: it is corrupt or not an image. "
            f"Upload a JPEG or PNG file."
        ) from exc


def annotation_from_mask(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> annotation RGB uint8 (H, W, 3), as a PerSeg mask file reads."""
    ann = np.zeros(mask.shape + (3,), np.uint8)
    ann[mask.astype(bool), 0] = ANNOTATION_RED
    return ann


def _check_size(mask_hw: tuple[int, int], image: np.ndarray, what: str) -> None:
    h, w = mask_hw
    if (h, w) != tuple(image.shape[:2]):
        raise DemoInputError(
            f"The {what} is {w}x{h} but the reference image is {image.shape[1]}x"
            f"{image.shape[0]} (width x height). Use a mask made for this image, at its size."
        )


def mask_from_upload(path: str | Path | None, image: np.ndarray) -> np.ndarray:
    """An uploaded mask file -> its annotation RGB (H, W, 3), exactly as `persam.run` reads it."""
    if path is None:
        raise DemoInputError(
            "No reference mask uploaded. Upload a PNG whose object pixels are non-zero, or "
            "choose 'painted' or 'clicked points' as the mask source."
        )
    ann = read_upload(path, "reference mask")
    _check_size(ann.shape[:2], image, f"reference mask '{display_name(path)}'")
    return ann


def mask_from_editor(value: dict | None, image: np.ndarray) -> np.ndarray:
    """The painted layers of a `gr.ImageEditor` value (numpy) -> annotation RGB (H, W, 3).

    A pixel is on the object where any layer has paint (alpha > 0; for layers without alpha,
    any non-zero channel).
    """
    layers = [np.asarray(layer) for layer in (value or {}).get("layers") or [] if layer is not None]
    if not layers:
        raise DemoInputError(
            "Nothing is painted: paint over the object in the reference editor (brush tool), "
            "or choose another mask source."
        )
    mask = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        if layer.shape[:2] != mask.shape:
            raise DemoInputError("The painted layers have different sizes; clear them and repaint.")
        paint = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer > 0
        mask |= paint if paint.ndim == 2 else paint.any(-1)
    _check_size(mask.shape, image, "painted mask")
    return annotation_from_mask(mask)


def mask_from_points(
    encoder: Encoder, image: np.ndarray, points: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """SAM's mask for clicked points [(x, y, label 1/0), ...] -> bool (H, W).

    Plain SAM (no PerSAM guidance): three candidate masks, the best-scoring one is kept.
    """
    if not points:
        raise DemoInputError("No points: click on the object in the reference image.")
    coords = np.array([(x, y) for x, y, _ in points], dtype=np.float32)
    labels = np.array([label for _, _, label in points], dtype=np.int64)
    with MODEL_LOCK:
        predictor = encoder.set_image(image)
        masks, scores, _ = decode(predictor, coords[None], labels[None])
    return masks[0, int(np.argmax(scores[0]))]


def read_test_images(paths: Sequence[str | Path] | None) -> list[tuple[str, np.ndarray]]:
    """Uploaded test images -> [(unique stem, RGB image)], in upload order."""
    if not paths:
        raise DemoInputError("No test images: upload one or more images to segment.")
    out, seen = [], set()
    for path in paths:
        stem = Path(path).stem
        name, k = stem, 1
        while name in seen:
            name, k = f"{stem}_{k}", k + 1
        seen.add(name)
        out.append((name, read_upload(path, "test image")))
    return out


# ----------------------------------------------------------------------------- method


def is_gf_sam(methods: DictConfig, name: str) -> bool:
    """Whether method `name` of `methods` is GF-SAM (its own switches, panels and features)."""
    return str(methods[name]._target_).endswith(".GFSAM")


def method_options(methods: DictConfig, name: str) -> dict[str, Any]:
    """The page's controls for method `name` as its config sets them: its switches (`SWITCHES`
    or `GF_SAM_SWITCHES`), `refine_steps`, `target_pooling`, `fit_steps` (PerSAM-F); the
    controls the method does not have are None."""
    cfg = methods[name]
    opts: dict[str, Any] = {k: bool(cfg[k]) if k in cfg else None for k in SWITCHES}
    opts |= {k: bool(cfg[k]) if k in cfg else None for k in GF_SAM_SWITCHES}
    opts["refine_steps"] = int(cfg.refine_steps) if "refine_steps" in cfg else None
    opts["target_pooling"] = str(cfg.target_pooling) if "target_pooling" in cfg else None
    opts["fit_steps"] = int(cfg.scale_weights.steps) if "scale_weights" in cfg else None
    return opts


class FitProgress(L.Callback):
    """Reports the PerSAM-F fit's steps to `report(done, total)` every `every` steps."""

    def __init__(self, report: Callable[[int, int], None], every: int = 20) -> None:
        self.report = report
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = batch_idx + 1
        if step % self.every == 0 or step == trainer.max_steps:
            self.report(step, trainer.max_steps)


def build_method(
    methods: DictConfig,
    name: str,
    sam,
    encoder: Encoder,
    trainer: Callable[..., L.Trainer] | None = None,
    options: dict[str, Any] | None = None,
    fit_report: Callable[[int, int], None] | None = None,
    features: Any = None,
) -> PerSAM:
    """Instantiate method `name` of `methods` (conf/method/*) with the page's `options`.

    `options` holds switches (`SWITCHES`, `GF_SAM_SWITCHES`), `refine_steps`, `target_pooling`
    and, for PerSAM-F, `fit_steps`; missing ones, and those the method has not, keep the
    config's values. `trainer` is the Lightning Trainer factory of the `trainer` group;
    `fit_report(step, total)` follows the PerSAM-F fit; `features` (the `features` group's
    encoder) is GF-SAM's (None: SAM's own embedding).
    """
    if name not in methods:
        raise DemoInputError(f"Unknown method '{name}'; choose one of {', '.join(methods)}.")
    cfg = OmegaConf.to_container(methods[name], resolve=True)
    options = dict(options or {})
    fit_steps = options.pop("fit_steps", None)
    cfg.update({k: v for k, v in options.items() if v is not None and k in cfg})
    extra = {"features": features} if is_gf_sam(methods, name) and features is not None else {}
    if "scale_weights" in cfg and fit_steps is not None:
        if int(fit_steps) < 1:
            raise DemoInputError(f"PerSAM-F fit steps must be at least 1, got {fit_steps}.")
        cfg["scale_weights"]["steps"] = int(fit_steps)
    if "scale_weights" in cfg and fit_report is not None:
        # the page follows the fit through a Trainer callback: fit with the Trainer loop (the
        # same weights as the plain loop, ~1 ms a step instead of ~0.1 ms)
        cfg["scale_weights"]["loop"] = "trainer"
        trainer = functools.partial(trainer or L.Trainer, callbacks=[FitProgress(fit_report)])
    try:
        return instantiate(
            OmegaConf.create(cfg), sam=sam, encoder=encoder, trainer=trainer, **extra
        )
    except Exception as exc:  # the method's own argument checks (refine_steps, pooling)
        cause = exc.__cause__ or exc
        raise DemoInputError(f"Invalid method options: {cause}") from exc


# ----------------------------------------------------------------------------- panels


def mask_view(image: np.ndarray, mask: np.ndarray, coords=None, labels=None) -> np.ndarray:
    """`persam.tasks.outputs.overlay` (mask tinted, points drawn) with the mask's outline in yellow."""
    coords = np.zeros((0, 2), np.int64) if coords is None else coords
    labels = np.zeros(0, np.int64) if labels is None else labels
    out = overlay(image, mask.astype(bool), coords, labels)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(0.004 * max(image.shape[:2])))
    cv2.drawContours(out, contours, -1, (255, 230, 0), thickness)
    return out


def heatmap(image: np.ndarray, sim: torch.Tensor, coords, labels) -> np.ndarray:
    """The similarity map (H, W) in colour over `image`, with the chosen points -> RGB."""
    s = sim.detach().float().cpu().numpy()
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-12)
    colour = cv2.cvtColor(
        cv2.applyColorMap((s * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
    )
    blend = (0.35 * image.astype(np.float32) + 0.65 * colour.astype(np.float32)).astype(np.uint8)
    return overlay(blend, np.zeros(image.shape[:2], bool), coords, labels)


def instances_view(image: np.ndarray, instance_map: np.ndarray) -> np.ndarray:
    """An indexed map (H, W) (0 background, 1..K instances) -> each instance tinted its own
    colour over `image`, outlined in yellow -> RGB."""
    out = image.astype(np.float32)
    k = int(instance_map.max())
    rng = np.random.default_rng(0)  # the same colours on every page
    for i, colour in zip(range(1, k + 1), rng.integers(60, 256, (k, 3)), strict=True):
        sel = instance_map == i
        out[sel] = 0.45 * out[sel] + 0.55 * colour
    out = out.astype(np.uint8)
    return mask_view(out, instance_map > 0) if k else out


@dataclass
class ImageResult:
    """One test image: its prediction and the panels the page shows."""

    name: str
    image: np.ndarray
    prediction: Prediction | GFSAMPrediction
    similarity: torch.Tensor  # (H, W) cosine similarity to the target (GF-SAM: probability)

    @property
    def mask(self) -> np.ndarray:
        return self.prediction.mask

    def panels(self, persam_f: bool = False) -> list[tuple[np.ndarray, str]]:
        """[(RGB, caption)]: final overlay, heat map + points, then PerSAM's step 0, 1, 2 masks
        or GF-SAM's accepted masks (its instances)."""
        p = self.prediction
        gf_sam = isinstance(p, GFSAMPrediction)
        out = [
            (mask_view(self.image, p.mask, p.coords, p.labels), f"{self.name}: final mask"),
            (
                heatmap(self.image, self.similarity, p.coords, p.labels),
                f"{self.name}: "
                + (
                    "probability, points (green selected, red not)"
                    if gf_sam
                    else "similarity, points (green +, red -)"
                ),
            ),
        ]
        if gf_sam:
            n = len(p.instances)
            what = "the fallback's mask" if p.fallback else f"{n} selected mask(s)"
            return out + [(instances_view(self.image, p.instance_map()), f"{self.name}: {what}")]
        out.append(
            (
                mask_view(self.image, p.first_mask, p.coords, p.labels),
                f"{self.name}: step 0 ({'weighted mask' if persam_f else 'first mask'})",
            )
        )
        for i, (mask, best) in enumerate(p.steps, start=1):
            out.append(
                (
                    mask_view(self.image, mask, p.coords, p.labels),
                    f"{self.name}: step {i} (refinement, SAM mask #{best})",
                )
            )
        return out


@dataclass
class DemoResult:
    method: str
    target: Target
    images: list[ImageResult] = field(default_factory=list)

    @property
    def losses(self) -> np.ndarray | None:
        return None if self.target.fit is None else np.asarray(self.target.fit.losses)


def run_method(
    method: PerSAM,
    reference: np.ndarray,
    annotation: np.ndarray,
    tests: Sequence[tuple[str, np.ndarray]],
    progress: ProgressFn | None = None,
) -> DemoResult:
    """Learn the target from (`reference`, `annotation`), segment every test image."""
    report = progress or (lambda fraction, desc: None)
    with MODEL_LOCK:
        report(0.0, "learning the target from the reference")
        try:
            target = method.learn_annotations(reference, annotation, name="reference")
        except EmptyReferenceMask as exc:
            raise DemoInputError(
                f"Unusable reference mask: {exc}. Paint over the object, upload a mask whose "
                f"object pixels are non-zero (red channel), or click a point on the object."
            ) from exc
        result = DemoResult(method=method.name, target=target)
        for i, (name, image) in enumerate(tests):
            report(i / len(tests), f"segmenting {name} ({i + 1}/{len(tests)})")
            prediction = method.segment(image, target)
            if isinstance(prediction, GFSAMPrediction):  # its probability map, at the image's size
                sim = F.interpolate(
                    torch.from_numpy(prediction.prob)[None, None], image.shape[:2], mode="bilinear"
                )[0, 0]
            else:  # the encoder's predictor still holds this image: the map the points came from
                sim = location_prior.similarity_map(method.encoder.predictor, target.location)
            result.images.append(ImageResult(name, image, prediction, sim))
        report(1.0, "done")
    return result


def loss_figure(losses: np.ndarray):
    """The PerSAM-F fit's loss per step (matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("dice + focal loss")
    ax.set_title("PerSAM-F scale-weight fit")
    fig.tight_layout()
    return fig


def weights_table(weights: np.ndarray) -> str:
    """Markdown table of the learned mixing weights in SAM's multimask order."""
    rows = [f"| mask {i} | {w:.4f} |" for i, w in enumerate(np.asarray(weights).tolist())]
    return "| SAM mask (multimask order) | weight |\n|---|---|\n" + "\n".join(rows)


def write_results(result: DemoResult, out_dir: Path) -> Path:
    """Write `out_dir/masks/<name>.png` (0/255, as `persam.run`) and `out_dir/masks.zip`."""
    out_dir = Path(out_dir)
    paths = []
    for item in result.images:
        path = out_dir / "masks" / f"{item.name}.png"
        write_mask(path, item.mask)
        paths.append(path)
    archive = out_dir / "masks.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in paths:
            zf.write(path, f"masks/{path.name}")
    return archive


def summary(result: DemoResult) -> str:
    """Markdown lines: per image the mask area and the points; warnings; PerSAM-F fit."""
    lines = [f"**{result.method}**: {len(result.images)} image(s) segmented."]
    for item in result.images:
        p = item.prediction
        if isinstance(p, GFSAMPrediction):
            detail = (
                f"{len(p.points)} points in {len(set(p.components.tolist()))} component(s), "
                f"{int(p.labels.sum())} selected" + (" (the fallback)" if p.fallback else "")
            )
        else:
            pts = ", ".join(
                f"{'+' if label else '-'}({x}, {y})"
                for (x, y), label in zip(p.coords.tolist(), p.labels.tolist(), strict=True)
            )
            detail = f"points {pts or 'none'}"
        area = 100.0 * float(item.mask.mean())
        lines.append(f"- {item.name}: mask {area:.1f}% of the image; {detail}")
        lines += [f"  - warning: {w}" for w in p.warnings]
    fit = result.target.fit
    if fit is not None:
        lines.append(
            f"- fit: {len(fit.losses)} steps in {fit.seconds:.1f} s, final loss "
            f"{fit.final_loss:.4f}"
        )
    return "\n".join(lines)
