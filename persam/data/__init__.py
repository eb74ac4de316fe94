"""Datasets and their readers: PerSeg objects (`perseg`), few-shot benchmarks (`fewshot`),
DAVIS videos (`davis`), the synthetic world (`synthetic`, `fewshot_synthetic`,
`synthetic_video`), the API's input forms (`inputs`) and file helpers (`files`)."""

from __future__ import annotations

from typing import Any


def build_dataset(node: Any):
    """The dataset of a `data` config node, without its `task` entry (the runner's task, which
    the entry point builds)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    spec.pop("task", None)
    return instantiate(spec)
