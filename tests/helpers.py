"""Small builders shared by tests: tiny PerSeg folders and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# A fast random-init SAM for end-to-end tests (small encoder, SAM's full decoder).
SMALL_BACKBONE = [
    "backbone=tiny",
    "backbone.encoder_embed_dim=32",
    "backbone.encoder_depth=1",
    "backbone.encoder_num_heads=1",
    "backbone.encoder_global_attn_indexes=[0]",
]

# A small `build_architecture` (8 x 8 grid, 128 px input) for the training code's unit tests.
SMALL_ARCH = dict(
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=1,
    encoder_global_attn_indexes=[0],
    image_size=128,
    vit_patch_size=16,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def write_object(root: Path, name: str, n: int = 3, size=(96, 128), seed: int = 0) -> None:
    """A PerSeg object: n images (a bright disc on noise) and PerSeg-style masks (BGR 0,0,128)."""
    rng = np.random.default_rng(seed)
    (root / "Images" / name).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w, 3), np.uint8)
        cx, cy, r = int(rng.integers(25, w - 25)), int(rng.integers(25, h - 25)), 18
        cv2.circle(img, (cx, cy), r, (40, 200, 250), -1)
        cv2.circle(mask, (cx, cy), r, (0, 0, 128), -1)
        cv2.imwrite(str(root / "Images" / name / f"{i:02d}.jpg"), img)
        cv2.imwrite(str(root / "Annotations" / name / f"{i:02d}.png"), mask)


def run_cli(args: list[str], cwd: Path, module: str = "persam.run", timeout: int = 900, env=None):
    """Run `python -m <module> <args>` as a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.setdefault("WANDB_MODE", "offline")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(overrides: list[str], run_dir: Path, config_name: str = "config") -> dict:
    """`persam.run.run` in this process (so that caplog sees its log), with the config Hydra
    composes for `python -m persam.run <overrides> hydra.run.dir=<run_dir>`; returns the
    metrics summary."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from persam.conf import CONFIG_DIR
    from persam.run import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[*overrides, f"hydra.run.dir={run_dir}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to the task function
    try:
        return run(cfg)
    finally:
        HydraConfig.instance().cfg = None
