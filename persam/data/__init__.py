"""Datasets and their readers: PerSeg objects (`perseg`), few-shot benchmarks (`fewshot`),
DAVIS videos (`davis`), the synthetic world (`synthetic`, `fewshot_synthetic`,
`synthetic_video`), the API's input forms (`inputs`) and file helpers (`files`)."""

from __future__ import annotations

from typing import Any


def data_node(node: Any) -> dict:
    """A `data` config node as the dataset's constructor takes it: resolved, without its `task`
    entry (the runner's task, which the entry point builds)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    spec.pop("task", None)
    return spec


def build_dataset(node: Any):
    """The dataset of a `data` config node (`data_node`)."""
    from hydra.utils import instantiate

    return instantiate(data_node(node))
