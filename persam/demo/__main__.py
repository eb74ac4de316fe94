"""`python -m persam.demo` — the interactive page on http://127.0.0.1:7860 (a Hydra app).

python -m persam.demo                          # embedded SAM, offline, port 7860
python -m persam.demo port=8080 backbone=vit_b backbone.checkpoint=/models/sam_vit_b.pth
python -m persam.demo start_method=persam_f methods.persam_f.scale_weights.steps=200
"""

from __future__ import annotations

import persam.app.entry  # noqa: F401 - first: the thread policy, before torch is loaded

# isort: split

import os

# Gradio: no telemetry, no version check (the page works offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from persam.conf import CONFIG_DIR  # noqa: E402
from persam.data import build_dataset  # noqa: E402
from persam.model.encoder import Encoder  # noqa: E402
from persam.run import build_backbone, features_from  # noqa: E402

log = logging.getLogger("persam.demo")


def build_demo(cfg: DictConfig, run_dir: Path):
    """The `Demo` of `cfg` (conf/demo.yaml): backbone, cached encoder, GF-SAM's features,
    methods, example."""
    from persam.demo import core
    from persam.demo.app import Demo

    if cfg.start_method not in cfg.methods:
        raise SystemExit(
            f"start_method={cfg.start_method} is not one of the methods ({', '.join(cfg.methods)})"
        )
    torch.manual_seed(cfg.seed)
    sam = build_backbone(cfg)
    cache = instantiate(cfg.cache)
    encoder = Encoder(sam, cache)
    features = None
    if cfg.get("features") is not None and any(core.is_gf_sam(cfg.methods, m) for m in cfg.methods):
        features = features_from(cfg.features, encoder, cache)
    example = None
    if cfg.get("example") is not None:
        example = next(iter(build_dataset(cfg.example)))
    return Demo(
        sam=sam,
        encoder=encoder,
        features=features,
        methods=cfg.methods,
        trainer=instantiate(cfg.trainer),
        results_dir=run_dir / "results",
        backbone=cfg.backbone.name,
        start_method=cfg.start_method,
        example=example,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="demo")
def serve(cfg: DictConfig) -> None:
    from persam.demo.app import build_app

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    demo = build_demo(cfg, run_dir)
    allowed = [str(run_dir.resolve())]
    if demo.example is not None:
        allowed.append(str(demo.example.reference_image.parent.parent.parent.resolve()))
    app = build_app(demo)
    app.queue(default_concurrency_limit=1)
    log.info("persam demo: http://%s:%d (Ctrl-C to stop)", cfg.host, cfg.port)
    app.launch(
        server_name=cfg.host,
        server_port=int(cfg.port),
        share=False,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        allowed_paths=allowed,
        quiet=False,
    )


# Options that only print (the config, help): they need no gradio.
PRINT_ONLY = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion")


def main() -> None:
    """`python -m persam.demo` / `persam-demo`: gradio (extra `demo`) is checked before Hydra
    starts, so without it the command stops in one line and writes no run folder."""
    import sys

    from persam.app.preflight import MissingExtraError, require_extra

    if not any(a in PRINT_ONLY or a.startswith("--cfg=") for a in sys.argv[1:]):
        try:
            require_extra("gradio", "demo", "python -m persam.demo")
        except MissingExtraError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    serve()


if __name__ == "__main__":
    main()
