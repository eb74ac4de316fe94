"""Training data: scenes of the synthetic world's *train* identities, served as scene pairs.

The train identities (`split_identities("train", seed, n)`; disjoint from the held-out ones)
are grouped into small "worlds" of `world_size` identities, like the held-out split: a scene of
one identity has the other identities of its world as possible distractors. Every scene is
rendered once up front (in `workers` processes; each from its own seeded numpy Generator, so the
pool does not depend on the number of workers), stored JPEG-compressed and decoded as the
on-disk splits are, and resized to SAM's input frame (`ResizeLongestSide`) as `SamPredictor`
does. A batch is `batch_size` distinct identities with two different scenes each (randomly
mirrored), drawn from a Generator seeded by (seed, step): batch `step` is always the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DataLoader, IterableDataset

from persam.backbones.sam import PIXEL_MEAN, PIXEL_STD
from persam.data.synthetic import (
    JPEG_QUALITY,
    SPLITS,
    Identity,
    Scene,
    render_scene,
    split_identities,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Parameters of the training scenes (the `train.data` config node)."""

    seed: int = 0
    num_identities: int = 480
    scenes_per_identity: int = 6
    world_size: int = 6
    distractors: int = 4
    workers: int = 2


def _render_one(task: tuple[Identity, tuple[Identity, ...], int, int, int, int, int]) -> Scene:
    """A train scene, JPEG round-tripped as on disk and resized so max(h, w) == image_size."""
    identity, world, seed, index, k, image_size, distractors = task
    # (split code, dataset seed, identity index, scene index): disjoint from the on-disk splits,
    # whose Generators are seeded with 5 entries.
    rng = np.random.default_rng([SPLITS["train"], seed, index, k])
    scene = render_scene(
        identity,
        rng,
        distractors=distractors,
        distractor_pool=world,
        distractor_labels=True,
        part_labels=True,
    )
    image, mask, labels, parts = scene.image, scene.mask, scene.labels, scene.parts
    ok, jpg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("cv2.imencode failed")
    image = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[..., ::-1]
    resize = ResizeLongestSide(image_size)
    small = resize.apply_image(np.ascontiguousarray(image))
    small_mask = resize.apply_image(mask.astype(np.uint8) * 255) >= 128
    small_labels = cv2.resize(labels, small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    small_labels[small_mask] = 0  # the resized target mask wins on its boundary
    small_parts = cv2.resize(parts, small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    small_parts[~small_mask] = 0
    return Scene(image=small, mask=small_mask, labels=small_labels, parts=small_parts)


def render_pool(cfg: DataConfig, image_size: int, progress: bool = True) -> list[list[Scene]]:
    """`pool[i][k]`: scene k of train identity i, in SAM's input frame (deterministic)."""
    identities = split_identities("train", cfg.seed, cfg.num_identities)
    tasks = []
    for i, ident in enumerate(identities):
        w0 = (i // cfg.world_size) * cfg.world_size
        world = tuple(identities[w0 : w0 + cfg.world_size])
        for k in range(cfg.scenes_per_identity):
            tasks.append((ident, world, cfg.seed, i, k, image_size, cfg.distractors))
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="rendering scenes", unit="scene", disable=not progress)
    scenes: list[Scene] = []
    if cfg.workers > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            for scene in pool.map(_render_one, tasks, chunksize=cfg.scenes_per_identity):
                scenes.append(scene)
                bar.update(1)
    else:
        for task in tasks:
            scenes.append(_render_one(task))
            bar.update(1)
    bar.close()
    log.info(
        "Rendered %d scenes of %d train identities in %.1f s",
        len(scenes),
        cfg.num_identities,
        time.perf_counter() - start,
    )
    n = cfg.scenes_per_identity
    return [scenes[i * n : (i + 1) * n] for i in range(cfg.num_identities)]


def touching_group(mask: np.ndarray, labels: np.ndarray, min_area: float) -> np.ndarray:
    """The "group" of a target (h, w) bool: the target and every labelled object (at least
    `min_area` of the image) that touches it, as float32 0/1 (h, w)."""
    h, w = mask.shape
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
    out = mask.copy()
    for k in np.unique(labels[ring]):
        if k > 0:
            obj = labels == k
            if obj.sum() >= min_area * h * w:
                out |= obj
    return out.astype(np.float32)


class PairBatches(IterableDataset):
    """Endless batches of scene pairs; batch `step` is a pure function of (seed, step).

    A batch (dict of tensors, 2B images; image `i` and image `(i + B) % 2B` show the same
    identity):
      image (2B, 3, S, S) float, normalised by SAM's pixel mean/std and zero-padded (as
          `Sam.preprocess`);
      mask (2B, 1, S, S) float 0/1 in the same frame; valid (2B, 2) int, the unpadded (h, w);
      identity (2B,) int, index of the train identity;
      others (2B, E, S, S) float 0/1: up to `extra_objects` visible distractors per image (at
          least `min_other_area` of the image each; more promptable-segmentation targets for
          the same encoder pass), others_ok (2B, E) bool: which of them exist;
      parts (2B, S, S) long: `k` on the target's k-th visible part, 0 elsewhere (the "part"
          scale of SAM's nested masks; all 0 for objects without parts);
      group (2B, 1, S, S) float 0/1: the target and the distractors touching it (the "group"
          scale; the target alone when none touches it).
    """

    def __init__(
        self,
        pool: list[list[Scene]],
        batch_size: int,
        image_size: int,
        seed: int = 0,
        extra_objects: int = 0,
        min_other_area: float = 0.004,
    ) -> None:
        super().__init__()
        if batch_size > len(pool):
            raise ValueError(
                f"train.batch_size={batch_size} pairs needs at least as many train identities "
                f"(train.data.num_identities={len(pool)})"
            )
        if min(len(s) for s in pool) < 2:
            raise ValueError("train.data.scenes_per_identity must be at least 2 (scene pairs)")
        self.pool = pool
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.extra_objects = extra_objects
        self.min_other_area = min_other_area
        self.mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD).view(3, 1, 1)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, 11])
        b, s = self.batch_size, self.image_size
        ids = rng.choice(len(self.pool), size=b, replace=False)
        picks = [rng.choice(len(self.pool[i]), size=2, replace=False) for i in ids]
        flips = rng.random(2 * b) < 0.5
        images = torch.zeros(2 * b, 3, s, s)
        masks = torch.zeros(2 * b, 1, s, s)
        valid = torch.zeros(2 * b, 2, dtype=torch.long)
        identity = torch.zeros(2 * b, dtype=torch.long)
        e = self.extra_objects
        others = torch.zeros(2 * b, e, s, s)
        others_ok = torch.zeros(2 * b, e, dtype=torch.bool)
        parts = torch.zeros(2 * b, s, s, dtype=torch.long)
        group = torch.zeros(2 * b, 1, s, s)
        other_rng = np.random.default_rng([self.seed, step, 12])  # keeps `rng`'s draws as before
        for j in range(2 * b):
            i = int(ids[j % b])
            scene = self.pool[i][int(picks[j % b][j // b])]
            image, mask, labels, part = scene.image, scene.mask, scene.labels, scene.parts
            if flips[j]:
                image, mask, labels = image[:, ::-1], mask[:, ::-1], labels[:, ::-1]
                part = part[:, ::-1] if part is not None else None
            h, w = mask.shape
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
            images[j, :, :h, :w] = (x - self.mean) / self.std
            masks[j, 0, :h, :w] = torch.from_numpy(np.ascontiguousarray(mask)).float()
            valid[j] = torch.tensor([h, w])
            identity[j] = i
            if part is not None:
                parts[j, :h, :w] = torch.from_numpy(np.ascontiguousarray(part).astype(np.int64))
            if labels is not None:
                near = touching_group(mask, labels, self.min_other_area)
            else:
                near = mask.astype(np.float32)
            group[j, 0, :h, :w] = torch.from_numpy(np.ascontiguousarray(near))
            if e:
                ks, areas = np.unique(labels, return_counts=True)
                big = ks[(ks > 0) & (areas >= self.min_other_area * h * w)]
                chosen = other_rng.permutation(big)[:e]
                for q, k in enumerate(chosen):
                    others[j, q, :h, :w] = torch.from_numpy(np.ascontiguousarray(labels == k))
                    others_ok[j, q] = True
        return {
            "image": images,
            "mask": masks,
            "valid": valid,
            "identity": identity,
            "others": others,
            "others_ok": others_ok,
            "parts": parts,
            "group": group,
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


class ScenePairData(L.LightningDataModule):
    """The training data of `python -m persam.train`: the scene pool (`render_pool`, rendered
    once in `setup`) served as `PairBatches` of `batch_size` pairs.

    Args: `image_size` is the model's input size (`backbone.image_size`); `batch_size`,
    `extra_objects` as `PairBatches`; the scene fields as `DataConfig`; `progress` shows a bar
    while rendering.
    """

    def __init__(
        self,
        image_size: int,
        batch_size: int = 6,
        extra_objects: int = 0,
        seed: int = 0,
        num_identities: int = 480,
        scenes_per_identity: int = 6,
        world_size: int = 6,
        distractors: int = 4,
        workers: int = 2,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.scenes = DataConfig(
            seed=seed,
            num_identities=num_identities,
            scenes_per_identity=scenes_per_identity,
            world_size=world_size,
            distractors=distractors,
            workers=workers,
        )
        self.batches: PairBatches | None = None
        self.render_seconds = 0.0

    @property
    def num_scenes(self) -> int:
        return self.scenes.num_identities * self.scenes.scenes_per_identity

    def setup(self, stage: str | None = None) -> None:
        if self.batches is not None:
            return
        start = time.perf_counter()
        pool = render_pool(self.scenes, self.hparams.image_size, progress=self.hparams.progress)
        self.batches = PairBatches(
            pool,
            self.hparams.batch_size,
            self.hparams.image_size,
            seed=self.scenes.seed,
            extra_objects=self.hparams.extra_objects,
        )
        self.render_seconds = time.perf_counter() - start

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, num_workers=0)


def grid_fraction(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Fraction of each feature-grid cell covered by `mask` (B, 1, S, S) -> (B, grid*grid)."""
    return F.adaptive_avg_pool2d(mask, grid).flatten(1)
