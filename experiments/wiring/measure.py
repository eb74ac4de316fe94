"""Measure the wiring of a checkout: lines per module, the longest functions, and which composed
configs are built by `instantiate` (have a `_target_`). Prints markdown tables for two trees.

    git archive c3acd66 | tar -x -C /tmp/before       # the tree before issue 10
    python experiments/wiring/measure.py /tmp/before .

The config part composes each tree's own conf/ in a subprocess with that tree on PYTHONPATH.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

COMPOSE = r"""
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
conf = Path(sys.argv[1])
out = {}
with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
    for group in ("backbone", "method", "data", "logger", "trainer"):
        for p in sorted((conf / group).glob("*.yaml")):
            if p.stem == "base":
                continue
            node = compose("config", overrides=[f"{group}={p.stem}"]).get(group)
            out[f"`{group}={p.stem}`"] = node is not None and "_target_" in node
    cfg = compose("train")
    out["train.yaml: data module"] = "_target_" in cfg.train.data
    out["train.yaml: model"] = "_target_" in cfg.train.get("module", {})
    out["train.yaml: callbacks (record, export)"] = "callbacks" in cfg.train
    out["train.yaml: trainer"] = "_target_" in cfg.trainer
    out["train.yaml: placeholder `method.name`"] = "method" in cfg
print(json.dumps(out))
"""


def lines(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): len(p.read_text().splitlines())
        for p in sorted((root / "persam").rglob("*.py"))
        if p.parent.name != "conf"
    }


def functions(root: Path) -> list[tuple[int, str]]:
    found = []
    for p in sorted((root / "persam").rglob("*.py")):
        if p.parent.name == "conf":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                found.append((size, f"{p.relative_to(root / 'persam')}:{node.name}"))
    return sorted(found, reverse=True)


def targets(root: Path) -> dict[str, bool]:
    env = dict(os.environ, PYTHONPATH=str(root.resolve()))
    out = subprocess.run(
        [sys.executable, "-c", COMPOSE, str((root / "conf").resolve())],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    lb, la = lines(before), lines(after)
    print("| module | lines before | lines after |\n|---|---:|---:|")
    for name in sorted(set(lb) | set(la)):
        if lb.get(name) != la.get(name):
            print(f"| `{name}` | {lb.get(name, '—')} | {la.get(name, '—')} |")
    print(f"| all of `persam/` | {sum(lb.values())} | {sum(la.values())} |\n")
    print("| longest before | lines | longest after | lines |\n|---|---:|---|---:|")
    for (nb, fb), (na, fa) in zip(functions(before)[:8], functions(after)[:8], strict=True):
        print(f"| `{fb}` | {nb} | `{fa}` | {na} |")
    tb, ta = targets(before), targets(after)
    yes = {None: "—", True: "yes", False: "no"}
    print("\n| composed config | `_target_` before | after |\n|---|---|---|")
    for name in ta:
        print(f"| {name} | {yes[tb.get(name)]} | {yes[ta[name]]} |")


if __name__ == "__main__":
    main()
