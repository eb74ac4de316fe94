"""`python -m persam.report <multirun folder>` — compare the runs of a sweep.

Reads every job folder (`<sweep>/<n>/.hydra/overrides.yaml` and `metrics.json`), names each
variant by the overrides that differ between jobs, and writes into the sweep folder:

    report.md            variants (mIoU / mBIoU / mAcc) and per-object IoU, as markdown
    report.csv           one row per variant
    report_objects.csv   one row per (variant, object)
    report.png           bar chart of mIoU / mBIoU / mAcc per variant
    report_fewshot.csv   few-shot runs (episodes): one row per (variant, fold); report.md then
                         has a table of mIoU / FB-IoU per fold and their mean
    report_references.png  with data.reference=all: per object, the IoU of each reference (the
                         spread of the result over the choice of reference), one panel per variant

With instance metrics (every run has them) report.md also lists instance precision / recall /
F1 per variant; with data.reference=all, each object's IoU mean, std, min and max over references.

Video sweeps (`persam.video -m ...`, units = sequences) are reported the same way with J&F,
J and F per variant and J&F per sequence (`report_sequences.csv`).

Only complete runs are ranked. Jobs that did not finish (no metrics.json, or `complete: false`
in it: killed or interrupted, reported as "incomplete" with the command that resumes them),
jobs of the sweep that never started (listed in `<sweep>/multirun.yaml`, no job folder), and
jobs with failed units (an object, episode or sequence that failed on bad data: never ranked)
are listed under the problems; the complete ones are still reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from persam.app.preflight import IGNORED_KEYS

METRICS = ("miou", "mbiou", "macc")


@dataclass(frozen=True)
class Kind:
    """What a run's units are and which of its numbers the report shows."""

    unit_key: str  # key of the per-unit entries in metrics.json
    metrics: tuple[str, ...]  # run-level numbers
    labels: tuple[str, ...]  # their names in the report
    unit_metrics: tuple[str, ...]  # per-unit numbers (the first one in the per-unit table)


OBJECTS = Kind("objects", METRICS, ("mIoU", "mBIoU", "mAcc"), ("iou", "biou", "acc"))
SEQUENCES = Kind(
    "sequences", ("jf", "j_mean", "f_mean"), ("J&F", "J", "F"), ("jf", "j_mean", "f_mean")
)


def kind_of(metrics: dict) -> Kind:
    """Video runs have `sequences`; image runs `objects`."""
    return SEQUENCES if "sequences" in metrics else OBJECTS


class ReportError(RuntimeError):
    """The folder holds nothing that can be reported."""


@dataclass
class Job:
    folder: Path
    overrides: list[str]
    metrics: dict | None
    name: str = ""
    problems: list[str] = field(default_factory=list)
    started: bool = True

    @property
    def finished(self) -> bool:
        """A complete run: metrics.json with an entry for every expected unit and no failed
        unit (a run with failed units is never ranked, whatever `complete` an older run wrote)."""
        return (
            self.metrics is not None
            and self.metrics.get("complete", True) is True
            and not self.metrics.get("n_failed")
        )


def _keep(override: str) -> bool:
    """Overrides that name a variant (not `resume=true`, `progress=false`, ...)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(".", 1)[0] not in IGNORED_KEYS


def _canonical(override: str) -> str:
    """`key=value` as Hydra's sweeper writes it, booleans in lower case (`overlays=false`), so
    the jobs of a sweep and a job run again by hand compare equal."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
        value = parsed.value()
        text = str(value).lower() if isinstance(value, bool) else parsed.get_value_element_as_str()
        return f"{parsed.get_key_element()}={text}"
    except Exception:  # noqa: BLE001 - shown as written
        return override


def _read_overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    overrides = [str(o) for o in (yaml.safe_load(path.read_text()) or [])]
    return [_canonical(o) for o in overrides if _keep(o)]


def _incomplete(folder: Path, metrics: dict) -> str:
    units = [k for k in ("objects", "episodes", "sequences") if isinstance(metrics.get(k), dict)]
    done = len(metrics[units[0]]) if units else 0
    expected = metrics.get("expected")
    count = f"{done} of {len(expected)}" if isinstance(expected, list) else str(done)
    module = "persam.video" if units == ["sequences"] else "persam.run"
    return (
        f"incomplete: {count} {units[0] if units else 'units'} finished (killed or "
        f"interrupted); not ranked. Finish it with `python -m {module} resume=true "
        f"hydra.run.dir={folder}`"
    )


def _failed(folder: Path, metrics: dict) -> str:
    """A run with failed units (bad data): never ranked, whatever its other units scored."""
    unit = kind_of(metrics).unit_key
    if "episodes" in metrics:
        unit = "episodes"
    failed = [str(n) for n in metrics.get("failed", [])]
    shown = ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
    module = "persam.video" if unit == "sequences" else "persam.run"
    interrupted = metrics.get("finished") is False or (
        metrics.get("finished") is None and metrics.get("complete", True) is not True
    )
    note = " (and interrupted before the end)" if interrupted else ""
    unscored = metrics.get("classes_without_episodes") or []
    classes = (
        f"; classes with no scored episode: {', '.join(map(str, unscored[:10]))}"
        if unscored
        else ""
    )
    return (
        f"failed {unit}: {shown}{note}{classes}; not ranked. The errors (the file and the fix) "
        f"are in {folder / 'metrics.json'}; fix the data and finish it with `python -m "
        f"{module} resume=true hydra.run.dir={folder}`"
    )


def _entry_module(sweep: Path) -> str:
    """`persam.video` for a video sweep (its config has the `video` group), else `persam.run`."""
    try:
        cfg = yaml.safe_load((Path(sweep) / "multirun.yaml").read_text()) or {}
        choices = cfg.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    except Exception:  # noqa: BLE001
        return "persam.run"
    return "persam.video" if "video" in choices else "persam.run"


def expected_jobs(sweep: Path) -> list[list[str]] | None:
    """The overrides of every job of the sweep recorded in `sweep/multirun.yaml` (None if none)."""
    path = Path(sweep) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = yaml.safe_load(path.read_text()) or {}
        hydra_cfg = cfg.get("hydra", {})
        params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()]
        arguments += list((hydra_cfg.get("overrides") or {}).get("task") or [])
        parsed = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - a sweep we cannot expand is reported from its folders
        return None
    return [[_canonical(o) for o in job if _keep(o)] for batch in batches for job in batch]


def find_jobs(sweep: Path) -> list[Job]:
    """Job folders of a multirun (or a single run folder)."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise ReportError(
            f"{sweep} is not a folder. Pass a multirun folder (outputs/multiruns/...)."
        )
    candidates = (
        [sweep]
        if (sweep / ".hydra").is_dir()
        else sorted(
            (p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
            key=lambda p: (len(p.name), p.name),
        )
    )
    jobs = []
    for folder in candidates:
        metrics_path = folder / "metrics.json"
        metrics = None
        problems = []
        if metrics_path.is_file():
            try:
                metrics = json.loads(metrics_path.read_text())
            except json.JSONDecodeError as exc:
                problems.append(f"unreadable metrics.json ({exc})")
        else:
            log_file = folder / "run.log"
            where = (
                f"see {log_file}"
                if log_file.is_file() and log_file.stat().st_size
                else "its run.log is empty"
            )
            problems.append(
                f"incomplete: no metrics.json, the job did not finish its first object ({where}); "
                f"not ranked"
            )
        if metrics is not None and metrics.get("n_failed"):
            problems.append(_failed(folder, metrics))
        elif metrics is not None and metrics.get("complete", True) is not True:
            problems.append(_incomplete(folder, metrics))
        jobs.append(Job(folder, _read_overrides(folder), metrics, problems=problems))
    if sweep not in candidates:
        module = _entry_module(sweep)
        present = [sorted(j.overrides) for j in jobs]
        for number, overrides in enumerate(expected_jobs(sweep) or []):
            if sorted(overrides) in present:
                continue
            folder = sweep / str(number)
            jobs.append(
                Job(
                    folder,
                    overrides,
                    None,
                    problems=[
                        f"never started: job {number} of the sweep in multirun.yaml has no "
                        f"finished job folder ({folder}); not ranked. Run it with "
                        f"`python -m {module} {' '.join(overrides)} hydra.run.dir={folder}`"
                    ],
                    started=False,
                )
            )
    if not jobs:
        raise ReportError(
            f"No Hydra job folders in {sweep} (expected <sweep>/<n>/.hydra/). Run a sweep with "
            f"`python -m persam.run -m ...` and pass its folder."
        )
    _name_variants(jobs)
    return jobs


def _name_variants(jobs: list[Job]) -> None:
    """A variant's name: its overrides that are not shared by every job that ran its units
    (finished, or with failed units: the same names in the ranking and the problems)."""
    pool = [j for j in jobs if j.metrics is not None and j.overrides]
    if len(pool) < 2:
        pool = [j for j in jobs if j.overrides and j.started]
    common = set.intersection(*(set(j.overrides) for j in pool)) if len(pool) > 1 else set()
    for job in jobs:
        own = [o for o in job.overrides if o not in common]
        job.name = " ".join(own) or (" ".join(job.overrides) or job.folder.name)


def _fmt(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


# Over 80 lines: the report's sections in the order report.md prints them (problems, ranking,
# per-object table, few-shot and reference sections, files); each section is a few lines that
# read the jobs gathered at the top.
def build_report(sweep: Path) -> dict:
    """Write the report files into `sweep`; returns what was written and the tables."""
    sweep = Path(sweep)
    jobs = find_jobs(sweep)
    done = [j for j in jobs if j.finished]
    if not done:
        lines = "\n".join(f"  {j.folder.name}: {'; '.join(j.problems)}" for j in jobs)
        raise ReportError(f"No finished runs (none complete) in {sweep}:\n{lines}")

    kind = kind_of(done[0].metrics)
    mixed = [j.folder.name for j in done if kind_of(j.metrics) is not kind]
    if mixed:
        raise ReportError(
            f"{sweep} mixes image and video runs ({', '.join(mixed)} differ from "
            f"{done[0].folder.name}); report them separately."
        )
    unit = kind.unit_key
    singular = unit[:-1]
    rows = [
        {
            "variant": j.name,
            "job": j.folder.name,
            **{m: j.metrics.get(m) for m in kind.metrics},
            f"n_{unit}": j.metrics.get(f"n_{unit}", len(j.metrics.get(unit, {}))),
            "n_failed": j.metrics.get("n_failed", 0),
            "method": j.metrics.get("method"),
            "backbone": j.metrics.get("backbone"),
        }
        for j in done
    ]
    objects = sorted({o for j in done for o in j.metrics.get(unit, {})})
    object_rows = []
    for j in done:
        for name, r in j.metrics.get(unit, {}).items():
            row = {"variant": j.name, singular: name, "status": r.get("status")}
            row.update({m: r.get(m) for m in kind.unit_metrics})
            row["error"] = r.get("error")
            if kind is OBJECTS:
                row["mask_weights"] = json.dumps(r["mask_weights"]) if "mask_weights" in r else ""
            object_rows.append(row)

    with open(sweep / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(sweep / f"report_{unit}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(object_rows[0]) if object_rows else ["variant"])
        writer.writeheader()
        writer.writerows(object_rows)

    md = [
        f"# Report: {sweep}",
        "",
        f"| variant | {' | '.join(kind.labels)} | {unit} | failed |",
        "|---|" + "---:|" * (len(kind.metrics) + 2),
    ]
    for r in rows:
        numbers = " | ".join(_fmt(r[m]) for m in kind.metrics)
        md.append(f"| {r['variant']} | {numbers} | {r[f'n_{unit}']} | {r['n_failed']} |")
    md += [
        "",
        f"## {kind.labels[0] if kind is SEQUENCES else 'IoU'} per {singular}",
        "",
        f"| {singular} | " + " | ".join(r["variant"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for obj in objects:
        cells = []
        for j in done:
            entry = j.metrics.get(unit, {}).get(obj)
            cells.append(
                "-"
                if entry is None
                else (
                    "failed"
                    if entry.get("status") == "failed"
                    else _fmt(entry.get(kind.unit_metrics[0]))
                )
            )
        md.append(f"| {obj} | " + " | ".join(cells) + " |")
    md += _fewshot_section(done, sweep)
    with_instances = [j for j in done if j.metrics.get("instances")]
    if with_instances:
        md += [
            "",
            "## Instances (mean over objects)",
            "",
            "| variant | precision | recall | F1 | ground truth |",
            "|---|---:|---:|---:|---|",
        ]
        for j in with_instances:
            inst = j.metrics["instances"]
            md.append(
                f"| {j.name} | {_fmt(inst.get('precision'))} | {_fmt(inst.get('recall'))} "
                f"| {_fmt(inst.get('f1'))} | {inst.get('source', '-')} |"
            )
    spread = [j for j in done if _by_reference(j)]
    written = []
    if spread:
        md += [
            "",
            "## IoU by reference (data.reference=all)",
            "",
            "| variant | object | mean | std | min | max | references |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for j in spread:
            for obj, ious in _by_reference(j).items():
                values = list(ious.values())
                md.append(
                    f"| {j.name} | {obj} | {_fmt(float(sum(values) / len(values)))} "
                    f"| {_fmt(j.metrics['objects'][obj].get('iou_std'))} | {_fmt(min(values))} "
                    f"| {_fmt(max(values))} | {len(values)} |"
                )
        md += ["", "![IoU by reference](report_references.png)"]
        _reference_plot(spread, sweep / "report_references.png")
        written.append(sweep / "report_references.png")
    problems = [j for j in jobs if j.problems]
    if problems:
        md += ["", "## Runs with problems", ""]
        md += [f"- `{j.folder.name}` ({j.name}): {'; '.join(j.problems)}" for j in problems]
    (sweep / "report.md").write_text("\n".join(md) + "\n")
    _bar_chart(rows, sweep / "report.png", kind)
    return {
        "rows": rows,
        "objects": object_rows,
        "problems": [(j.name, j.problems) for j in problems],
        "files": [
            sweep / n for n in ("report.md", "report.csv", f"report_{unit}.csv", "report.png")
        ]
        + written,
    }


def _fewshot_section(done: list[Job], sweep: Path) -> list[str]:
    """Few-shot jobs (metrics with `fbiou`): mIoU / FB-IoU per fold, one row per variant (the
    job's name without its `data.fold=`), and the mean over the folds run."""
    jobs = [j for j in done if "fbiou" in j.metrics]
    if not jobs:
        return []
    table: dict[str, dict] = {}
    csv_rows = []
    for j in jobs:
        m = j.metrics
        variant = " ".join(o for o in j.name.split() if not o.startswith("data.fold=")) or "-"
        fold = "-" if m.get("fold") is None else str(m["fold"])
        row = table.setdefault(variant, {"benchmark": m.get("benchmark"), "shots": m.get("shots")})
        row[fold] = (m.get("miou"), m.get("fbiou"))
        csv_rows.append(
            {
                "variant": variant,
                "benchmark": m.get("benchmark"),
                "fold": fold,
                "shots": m.get("shots"),
                "miou": m.get("miou"),
                "fbiou": m.get("fbiou"),
                "n_episodes": m.get("n_episodes"),
                "complete": m.get("complete"),
            }
        )
    with open(sweep / "report_fewshot.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    folds = sorted({r["fold"] for r in csv_rows}, key=lambda x: (len(x), x))
    md = [
        "",
        "## Few-shot: mIoU / FB-IoU per fold",
        "",
        "| variant | benchmark | shots | " + " | ".join(f"fold {f}" for f in folds) + " | mean |",
        "|---|---|---:|" + "---:|" * (len(folds) + 1),
    ]
    for variant, row in table.items():
        cells, pairs = [], []
        for f in folds:
            pair = row.get(f)
            cells.append("-" if pair is None else f"{_fmt(pair[0])} / {_fmt(pair[1])}")
            if pair is not None and None not in pair:
                pairs.append(pair)
        mean = (
            "-"
            if not pairs
            else f"{_fmt(sum(p[0] for p in pairs) / len(pairs))} / "
            f"{_fmt(sum(p[1] for p in pairs) / len(pairs))}"
        )
        md.append(
            f"| {variant} | {row['benchmark']} | {row['shots']} | "
            + " | ".join(cells)
            + f" | {mean} |"
        )
    return md


def _by_reference(job: Job) -> dict[str, dict[str, float]]:
    """{object: {reference: iou}} of a data.reference=all run (objects that ran)."""
    out = {}
    for name, entry in job.metrics.get("objects", {}).items():
        refs = entry.get("by_reference") or {}
        ious = {r: e["iou"] for r, e in refs.items() if e.get("iou") is not None}
        if ious:
            out[name] = ious
    return out


def _reference_plot(jobs: list[Job], path: Path) -> None:
    """Per object, one dot per reference (its IoU) and the mean +- std; a panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_obj = max(len(_by_reference(j)) for j in jobs)
    fig, axes = plt.subplots(
        len(jobs), 1, figsize=(max(6, 0.6 * n_obj + 2), 3.6 * len(jobs)), squeeze=False
    )
    for ax, job in zip(axes[:, 0], jobs, strict=True):
        data = _by_reference(job)
        for x, ious in enumerate(data.values()):
            values = 100 * np.array(list(ious.values()))
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), values, s=14, alpha=0.7, color="tab:blue")
            ax.errorbar(x + 0.3, values.mean(), yerr=values.std(), fmt="_", color="black")
        ax.set_xticks(range(len(data)), list(data), rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%) by reference")
        ax.set_ylim(0, 100)
        title = job.name if len(job.name) <= 90 else job.name[:87] + "..."
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bar_chart(rows: list[dict], path: Path, kind: Kind = OBJECTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    for i, (metric, label) in enumerate(zip(kind.metrics, kind.labels, strict=True)):
        values = [100 * (r[metric] or 0.0) for r in rows]
        ax.bar(x + (i - 1) * width, values, width, label=label)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("persam sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persam-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/multiruns/...)")
    args = parser.parse_args(argv)
    try:
        result = build_report(args.folder)
    except ReportError as exc:
        print(f"persam-report: {exc}", file=sys.stderr)
        return 1
    print((args.folder / "report.md").read_text())
    for name, problems in result["problems"]:
        print(f"WARNING: {name}: {'; '.join(problems)}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
