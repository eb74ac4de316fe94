"""Few-shot episodes as a task of the runner: learn from k supports, segment the query, score.

One unit = one episode (`0000`, `0001`, ...). The episode list is drawn by the dataset
(persam/data/fewshot.py) and saved as `episodes.json` in the run folder before the first one
runs (a resumed run refuses a different list). Each episode writes its predicted mask to
`masks/episodes/<episode>.png` (0/255, the query's size) and returns its areas; the run-level
numbers are HSNet's (`persam.metrics.fewshot.fewshot_scores`), and `episodes.csv` lists every episode.

The method learns one target per support set; a support set seen before (k = 1 draws the same
support often) reuses its target, and image embeddings come from the shared embedding cache.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from persam.data.fewshot import Episode, FewShotDataset, as_annotation
from persam.data.files import atomic_write
from persam.data.perseg import DataError
from persam.metrics.fewshot import episode_areas, fewshot_scores
from persam.model.method import EmptyReferenceMask
from persam.tasks.outputs import write_mask, write_overlay
from persam.tasks.runner import Task

log = logging.getLogger(__name__)

EPISODE_COLUMNS = ["episode", "class", "query", "supports", "iou"]


class EpisodeTask(Task):
    """Runs the episodes of a `FewShotDataset` with a method (PerSAM / PerSAM-F, any shots).

    Args:
      method: a bound PerSAM or PerSAMF.
      dataset: the episodic dataset.
      run_dir: the run folder.
      run_logger: `persam.tasks.loggers.RunLogger` (the fit's loss curves go to its logger).
      overlays: also write `overlays/episodes/<episode>.jpg`.
      max_targets: learned targets kept in memory for support sets drawn again.
    """

    unit_key = "episodes"
    columns = EPISODE_COLUMNS
    expected_errors = (DataError, EmptyReferenceMask, ValueError, ArithmeticError, OSError)

    def __init__(
        self,
        method,
        dataset: FewShotDataset,
        run_dir,
        run_logger=None,
        overlays: bool = False,
        max_targets: int = 64,
        **_: Any,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.run_logger = run_logger
        self.overlays = overlays
        self.max_targets = max_targets
        self._targets: OrderedDict[tuple, Any] = OrderedDict()
        self.targets_reused = 0
        self._warned = False
        self.episodes = {e.name: e for e in dataset.episodes()}
        self._save_episode_list()

    def _save_episode_list(self) -> None:
        path = self.run_dir / "episodes.json"
        record = {
            **self.dataset.describe(),
            "episodes": [e.as_dict() for e in self.episodes.values()],
        }
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
            if old is not None and old.get("episodes") != record["episodes"]:
                raise ValueError(
                    f"{path} holds a different episode list than this run draws (other data, "
                    "data.shots, data.episodes or data.seed). Use a new hydra.run.dir, or "
                    "the settings of the run that wrote it."
                )
        atomic_write(path, lambda f: json.dump(record, f, indent=1))

    # -- the runner's Task protocol ----------------------------------------------------------
    def units(self) -> list[str]:
        return list(self.episodes)

    def _target(self, episode: Episode):
        key = (episode.cls, episode.supports)
        if key in self._targets:
            self._targets.move_to_end(key)
            self.targets_reused += 1
            return self._targets[key]
        images, masks = [], []
        for rel in episode.supports:
            image, mask = self.dataset.load(rel, episode.cls)
            images.append(image)
            masks.append(as_annotation(mask))
        # No loss curve per episode (a thousand of them): the fit's result is in the entry.
        target = self.method.learn_annotations(images, masks)
        self._targets[key] = target
        if len(self._targets) > self.max_targets:
            self._targets.popitem(last=False)
        return target

    def run_unit(self, name: str) -> dict:
        episode = self.episodes[name]
        target = self._target(episode)
        image, gt = self.dataset.load(episode.query, episode.cls)
        pred = self.method.segment(image, target)
        write_mask(self.run_dir / "masks" / "episodes" / f"{name}.png", pred.mask)
        if self.overlays:
            out = self.run_dir / "overlays" / "episodes" / f"{name}.jpg"
            write_overlay(out, image, pred.mask, pred.coords, pred.labels)
            if self.run_logger is not None:
                self.run_logger.image(f"episodes/{name}", out)
        areas = episode_areas(pred.mask, gt)
        result = {
            "status": "ok",
            "error": None,
            "class": episode.cls,
            "query": episode.query,
            "supports": ";".join(episode.supports),
            "iou": areas["inter_fg"] / max(areas["union_fg"], 1),
            **areas,
            "warnings": list(pred.warnings),
        }
        if target.mask_weights is not None:
            result["mask_weights"] = [float(w) for w in target.mask_weights]
            result["final_loss"] = float(target.fit.final_loss)
        return result

    def failed_fields(self, name: str, exc: BaseException) -> dict:
        e = self.episodes[name]
        return {"class": e.cls, "query": e.query, "supports": ";".join(e.supports), "iou": None}

    def summarise(self, results: dict[str, dict]) -> dict:
        """HSNet's numbers over the episodes that ran (`fewshot_scores`); a failed episode is not
        scored, and a class with no scored episode has `iou: null`, is left out of `miou` and
        is listed (`classes_without_episodes`; `classes.<c>.n_failed` says which failed)."""
        ok = [r for r in results.values() if r.get("status") == "ok"]
        scores = fewshot_scores(ok, self.dataset.classes)
        failed: dict[str, int] = {}
        for r in results.values():
            if r.get("status") == "failed":
                failed[r["class"]] = failed.get(r["class"], 0) + 1
        classes = {c: {**v, "n_failed": failed.get(c, 0)} for c, v in scores["classes"].items()}
        self._write_csv(results)
        done = len(results) == len(self.episodes)
        unscored = scores["classes_without_episodes"]
        if done and unscored and not self._warned:
            self._warned = True
            drawn_failed = [c for c in unscored if failed.get(c)]
            not_drawn = [c for c in unscored if not failed.get(c)]
            if drawn_failed:
                log.warning(
                    "%d class(es) have no scored episode because every one of their episodes "
                    "failed (bad data: the errors, with the file and the fix, are in "
                    "metrics.json): %s. They are left out of mIoU (iou: null).",
                    len(drawn_failed),
                    ", ".join(drawn_failed[:20]),
                )
            if not_drawn:
                log.warning(
                    "%d class(es) of the fold drew no episode: %s. They are left out of mIoU "
                    "(iou: null; HSNet would count them 0). Raise data.episodes to cover them.",
                    len(not_drawn),
                    ", ".join(not_drawn[:20]),
                )
        return {
            "method": self.method.name,
            "benchmark": self.dataset.benchmark,
            "fold": self.dataset.fold,
            "shots": self.dataset.shots,
            "miou": scores["miou"],
            "fbiou": scores["fbiou"],
            "n_episodes": len(ok),
            "classes": classes,
            "classes_without_episodes": unscored,
            "targets_reused": self.targets_reused,
        }

    def _write_csv(self, results: dict[str, dict]) -> None:
        def rows(f):
            writer = csv.writer(f)
            writer.writerow(EPISODE_COLUMNS)
            for name in self.episodes:
                r = results.get(name)
                if r is None:
                    continue
                e = self.episodes[name]
                iou = r.get("iou")
                writer.writerow(
                    [name, e.cls, e.query, ";".join(e.supports), "" if iou is None else iou]
                )

        atomic_write(self.run_dir / "episodes.csv", rows)
