"""One runner for every kind of run: PerSeg objects, few-shot episodes, video sequences.

A run is a list of independent *units* (an object, an episode, a sequence). A `Task` knows how
to draw one unit's references and queries, segment and score it; the `Runner` owns everything a
run folder holds in common: the loop, per-unit failure handling, `metrics.json` / `metrics.csv`
rewritten after every unit (with `complete` and the `expected` units), resume, Ctrl-C, the
progress bar and the experiment logger.

`complete` is true only when every expected unit ran and none failed: a run with a failed unit
(bad data) is not complete, so `persam.report` lists it under the problems and never ranks it;
`resume=true` after the data is fixed runs the failed units again and completes it. `finished`
says whether every unit has an entry (the loop ran to its end), failed or not.

    task = ObjectTask(method=method, dataset=dataset, run_dir=run_dir, run_logger=logger)
    summary = Runner(run_dir, logger, resume=False).run(task)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from persam.tasks.loggers import RunLogger
from persam.tasks.outputs import write_metrics

log = logging.getLogger(__name__)


class Task:
    """How one kind of dataset is run and scored, one unit at a time (subclass it)."""

    # Key of the per-unit entries in metrics.json: "objects", "episodes" or "sequences".
    unit_key: str
    # Columns of metrics.csv and of the logger's table; the first names the unit.
    columns: list[str]
    # Failures of a unit that are the data's fault: logged without a traceback.
    expected_errors: tuple[type[BaseException], ...] = (ValueError, OSError)

    def units(self) -> list[str]:
        """Names of the units of work, in order."""
        raise NotImplementedError

    def run_unit(self, name: str) -> dict[str, Any]:
        """Run and score one unit; returns its metrics.json entry (`status`: "ok", ...).

        Raise to fail this unit alone (the runner records the error and goes on)."""
        raise NotImplementedError

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Run-level metrics (e.g. `miou`, `jf`) from the entries of the units run so far."""
        raise NotImplementedError

    def failed_fields(self, name: str, exc: BaseException) -> dict[str, Any]:
        """Fields of a failed unit's entry besides `status` and `error` (metrics as None...)."""
        return {}

    def csv_rows(self, results: dict[str, dict[str, Any]]) -> tuple[str, list[dict]] | None:
        """(key, rows) when metrics.csv and the logger's table have finer rows than the units
        (video: one per object of every sequence); None: one row per unit."""
        return None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; metrics.json was written with `complete: false, finished: false`."""


class Runner:
    """Runs a `Task` into `run_dir`.

    Args:
      run_dir: the run folder (Hydra's output dir).
      run_logger: the experiment logger (or None).
      resume: keep the entries of units already finished (`status: ok`) in an existing
        metrics.json, untouched, and run the others.
      progress: show a progress bar over the units.
      extra: fields written at the top of metrics.json (method, backbone, overrides, ...).
      live: called at every write; its fields are added too (e.g. the cache's hit counts).
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_logger: RunLogger | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        extra: dict[str, Any] | None = None,
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_logger = run_logger or RunLogger(None)
        self.resume = resume
        self.progress = progress
        self.extra = dict(extra or {})
        self.live = live

    def previous(self, unit_key: str) -> dict[str, dict[str, Any]]:
        """Finished entries of an earlier run in this folder (empty unless `resume`)."""
        path = self.run_dir / "metrics.json"
        if not self.resume or not path.is_file():
            return {}
        entries = json.loads(path.read_text()).get(unit_key, {})
        return {name: e for name, e in entries.items() if e.get("status") == "ok"}

    def run(self, task: Task) -> dict[str, Any]:
        """Run every unit of `task`; returns the metrics summary (also in metrics.json)."""
        names = list(task.units())
        done = {n: e for n, e in self.previous(task.unit_key).items() if n in names}
        if done:
            log.info("Resuming: %d of %d %s already finished", len(done), len(names), task.unit_key)
        results: dict[str, dict[str, Any]] = {}
        summary: dict[str, Any] = {}

        def write(complete: bool) -> None:
            summary.clear()
            summary.update(self.extra)
            if self.live is not None:
                summary.update(self.live())
            ordered = {n: results[n] for n in names if n in results}
            summary.update(task.summarise(ordered))
            summary["n_failed"] = sum(r["status"] == "failed" for r in ordered.values())
            summary["failed"] = [n for n, r in ordered.items() if r["status"] == "failed"]
            summary["complete"] = complete and not summary["n_failed"]
            summary["finished"] = complete
            summary["expected"] = names
            summary[task.unit_key] = ordered
            write_metrics(
                self.run_dir, summary, task.unit_key, task.columns, task.csv_rows(ordered)
            )

        bar = tqdm(
            total=len(names), desc=task.unit_key, disable=not self.progress, dynamic_ncols=True
        )
        try:
            for name in names:
                bar.set_postfix_str(name)
                if name in done:
                    results[name] = done[name]
                    bar.update(1)
                    continue
                start = time.perf_counter()
                try:
                    entry = task.run_unit(name)
                except Exception as exc:  # noqa: BLE001 - one unit's failure must not stop the run
                    if not isinstance(exc, task.expected_errors):
                        log.exception("Unexpected error on %s '%s'", task.unit_key, name)
                    log.error("%s '%s' failed: %s", task.unit_key.rstrip("s"), name, exc)
                    entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    entry.update(task.failed_fields(name, exc))
                entry["seconds"] = round(time.perf_counter() - start, 3)
                results[name] = entry
                write(complete=False)
                bar.update(1)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns a Ctrl-C during a fit (PerSAM-F) into sys.exit(1): the same thing
            if isinstance(exc, SystemExit) and not isinstance(exc.__context__, KeyboardInterrupt):
                raise
            bar.close()
            write(complete=False)
            raise RunInterrupted(
                f"interrupted after {len(results)} of {len(names)} {task.unit_key}"
            ) from exc
        bar.close()
        write(complete=True)
        self.run_logger.finish(
            summary, task.unit_key, task.columns, task.csv_rows(summary[task.unit_key])
        )
        return summary
