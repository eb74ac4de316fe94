"""`python -m persam.train` — train the embedded SAM from scratch (a Hydra app, conf/train.yaml).

python -m persam.train                                    # the shipped recipe (~46 min, 2 CPUs)
python -m persam.train train.export_dir=persam/weights    # ... and ship the result
python -m persam.train trainer.max_steps=5 train.batch_size=2 \
    train.data.num_identities=4 train.data.scenes_per_identity=2   # a quick check
python -m persam.train logger=wandb                       # W&B (offline) instead of CSV
python -m persam.train train.init_from=persam/weights/embedded_sam.pth   # continue training

Everything is built from conf/train.yaml by `instantiate`: the data module
(`persam.training.data.ScenePairData`), the model (`persam.training.module.EmbeddedSamModule`,
its architecture from the `backbone` group) and the callbacks (`persam.training.record.
TrainingRecord` writes `embedded_sam.pth`, the record `embedded_sam.json` / `.md` and
`history.json` into the run folder, and exports them). Deterministic given `seed`: the scenes
come from seeded numpy Generators, prompts from a Generator seeded by (seed, step), weights from
`seed_everything(seed)`, and the Trainer runs with `deterministic=True`.
"""

from __future__ import annotations

import persam.app.entry  # noqa: F401 - first: the thread policy, before torch is loaded

# isort: split

import logging  # noqa: E402
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import persam  # noqa: F401 - registers the ${persam_weights:...} resolver
from persam.app.entry import build
from persam.backbones.sam import CheckpointError
from persam.conf import CONFIG_DIR
from persam.training.memory import TrainingMemoryError

log = logging.getLogger("persam.train")

NON_ARCHITECTURE = ("_target_", "name", "checkpoint", "seed", "device")


def architecture(backbone: DictConfig) -> dict[str, Any]:
    """The `build_architecture` keyword arguments of a backbone config."""
    fields = OmegaConf.to_container(backbone, resolve=True)
    return {k: v for k, v in fields.items() if k not in NON_ARCHITECTURE}


def train(cfg: DictConfig) -> float | None:
    """Compose -> instantiate -> fit; returns the final loss (mean of the record's last steps)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import TQDMProgressBar

    from persam.training.memory import check_memory, is_out_of_memory, out_of_memory_error
    from persam.training.record import TrainingRecord

    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    arch = architecture(cfg.backbone)
    model = build(cfg.train.module, refuse=(CheckpointError,), architecture=arch)
    data = instantiate(cfg.train.data)
    callbacks = [instantiate(c) for c in cfg.train.callbacks.values()]
    num_params = sum(p.numel() for p in model.sam.parameters())
    need = check_memory(
        arch,
        data.hparams.batch_size,
        model.hparams.passes,
        data.num_scenes,
        num_params,
        float(cfg.train.memory_fraction),
        extra_objects=data.hparams.extra_objects,
    )
    log.info(
        "Embedded SAM: %s parameters, estimated peak memory %.2f GiB%s",
        f"{num_params:,}",
        need / 2**30,
        f"; starting from the weights of {model.init_from}" if model.init_from else "",
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = instantiate(cfg.trainer)(
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *([TQDMProgressBar(refresh_rate=1)] if cfg.progress else [])],
        enable_progress_bar=bool(cfg.progress),
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        max_epochs=-1,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(model, datamodule=data)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error(exc, data.hparams.batch_size, arch) from exc
        raise
    records = [c.record for c in callbacks if isinstance(c, TrainingRecord)]
    return records[0].get("final_losses", {}).get("loss") if records else None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except (TrainingMemoryError, CheckpointError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
