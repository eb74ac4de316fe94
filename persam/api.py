"""The Python API: `build_sam` (exported as `persam.build_sam`) builds a backbone from the same
`conf/backbone/` files as the command line, so a notebook and `persam.run` use one model.

    import persam
    sam = persam.build_sam("embedded")          # or "vit_h" (SAM_CHECKPOINT_DIR), or a path
    model = persam.PerSAM(sam)                  # persam.PerSAMF(sam): the configs' defaults
    target = model.learn(reference_image, reference_mask)
    prediction = model.segment(test_image, target)   # prediction.mask: (H, W) bool
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persam.conf import CONFIG_DIR

__all__ = ["backbone_names", "build_sam"]


def backbone_names() -> list[str]:
    """The backbones of `conf/backbone/` (`base` is the shared part, not a backbone)."""
    return sorted(
        p.stem for p in (Path(CONFIG_DIR) / "backbone").glob("*.yaml") if p.stem != "base"
    )


def _choice_for_path(path: Path) -> str:
    """The SAM ViT config whose name the checkpoint's file name carries (vit_h otherwise); a
    checkpoint of another shape is built with its own architecture (read from its shapes)."""
    for name in ("vit_b", "vit_l", "vit_h"):
        if name in path.name:
            return name
    return "vit_h"


def build_sam(name: str | Path = "embedded", device: str = "auto", **fields: Any):
    """A frozen SAM in eval mode, built as `persam.run backbone=<name>` builds it.

    `name`: a backbone of `conf/backbone/` (`embedded`, shipped; `vit_h` / `vit_l` / `vit_b`
    read their official checkpoint from `$SAM_CHECKPOINT_DIR`; `mobile_sam`, `sam2_hiera_t`,
    ...), or the path of a SAM checkpoint. `fields`: any `backbone.*` field, e.g.
    `checkpoint="random"` or `seed=1`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = {"device": device, **fields}
    path = Path(name).expanduser() if isinstance(name, Path) or "/" in str(name) else None
    if path is None and str(name) not in backbone_names():
        candidate = Path(str(name)).expanduser()
        if (
            candidate.suffix in (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
            or candidate.exists()
        ):
            path = candidate
        else:
            raise ValueError(
                f"build_sam({name!r}): not a backbone ({', '.join(backbone_names())}) nor a "
                f"checkpoint path."
            )
    choice = str(name)
    if path is not None:
        choice = _choice_for_path(path)
        overrides.setdefault("checkpoint", str(path))
    args = [f"backbone={choice}"] + [f"++backbone.{k}={_value(v)}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=args)
    return instantiate(cfg.backbone)


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, str | Path):
        text = str(v)
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)
