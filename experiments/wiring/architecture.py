"""Compare the architecture of two persam checkouts; print markdown tables, side by side.

    git archive 5085169 | tar -x -C /tmp/before       # the tree before the restructuring
    python experiments/wiring/architecture.py /tmp/before . > /tmp/wiring.md

Tables: files and lines per folder of persam/ (and the flat modules directly in persam/), lines
per module, the 15 longest functions, the places that declare each method option (an `__init__`
parameter, an annotated class field, a key in conf/method/*.yaml), and import cycles among persam
modules (imports inside functions included). Standard library only; persam is never imported.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import Counter, defaultdict, deque
from pathlib import Path

DASH = "—"
YAML_KEY = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:")


def modules(root: Path) -> dict[str, str]:
    """Path relative to the checkout ("persam/model/method.py") -> its source."""
    files = sorted((root / "persam").rglob("*.py"))
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; a column of numbers (or dashes) is right-aligned."""
    numeric = [all(isinstance(r[i], int) or r[i] == DASH for r in rows) for i in range(len(header))]
    align = ["---:" if num else "---" for num in numeric]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def folders(sizes: dict[str, dict[str, int]]) -> str:
    stats: dict[str, dict[str, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in sizes}
    for name, lines in sizes.items():
        for rel, n in lines.items():
            folder = stats[name][rel.rsplit("/", 1)[0]]
            folder[0], folder[1] = folder[0] + 1, folder[1] + n
    rows = [
        [f"`{folder}`"] + [c for name in sizes for c in stats[name].get(folder, (DASH, DASH))]
        for folder in sorted(set().union(*stats.values()))
    ]
    rows.append(["**total**"] + [c for v in sizes.values() for c in (len(v), sum(v.values()))])
    header = ["folder"] + [f"{col} {name}" for name in sizes for col in ("files", "lines")]
    flat = ", ".join(f"{name} {stats[name]['persam'][0]}" for name in sizes)
    return table(header, rows) + f"\n\nFlat modules directly in `persam/`: {flat}."


def module_lines(sizes: dict[str, dict[str, int]]) -> str:
    rows = [
        [f"`{rel}`"] + [lines.get(rel, DASH) for lines in sizes.values()]
        for rel in sorted(set().union(*sizes.values()))
    ]
    return table(["module"] + [f"lines {name}" for name in sizes], rows)


def functions(tree: dict[str, ast.Module]) -> list[tuple[int, str]]:
    """(lines, "path:Class.func") for every function and method, nested ones included."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, rel: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((child.end_lineno - child.lineno + 1, f"{rel}:{qual}"))
                visit(child, rel, qual + ".")
            else:
                visit(child, rel, prefix)

    for rel, module in tree.items():
        visit(module, rel, "")
    return sorted(found, key=lambda f: (-f[0], f[1]))


def longest(parsed: dict[str, dict[str, ast.Module]], top: int = 15, limit: int = 80) -> str:
    funcs = {name: functions(tree) for name, tree in parsed.items()}
    rows = []
    for i in range(top):
        row: list[object] = [i + 1]
        for name in parsed:
            lines, qual = funcs[name][i] if i < len(funcs[name]) else (DASH, DASH)
            row += [f"`{qual}`" if qual != DASH else qual, lines]
        rows.append(row)
    header = ["#"] + [f"{col} {name}" for name in parsed for col in ("function", "lines")]
    over = ", ".join(f"{name} {sum(n > limit for n, _ in funcs[name])}" for name in parsed)
    return table(header, rows) + f"\n\nFunctions over {limit} lines: {over}."


def annotated(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)


def class_fields(module: ast.Module, classes: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            names += [s.target.id for s in node.body if annotated(s)]
    return list(dict.fromkeys(names))


def option_fields(before: Path, after: Path) -> tuple[list[str], str]:
    for label, root, rel, kind in (
        ("after", after, "persam/model/options.py", "Options"),
        ("before", before, "persam/schema.py", "Schema"),
    ):
        classes = tuple(c + kind for c in ("PerSAM", "PerSAMF", "ScaleWeights"))
        if (root / rel).is_file():
            names = class_fields(ast.parse((root / rel).read_text(encoding="utf-8")), classes)
            if names:
                return names, f"the {label} tree's `{rel}` ({', '.join(classes)})"
    raise SystemExit("no options dataclasses found in either tree")


def declarations(root: Path, tree: dict[str, ast.Module], fields: list[str]) -> Counter[str]:
    declared: list[str] = []
    classes = [n for m in tree.values() for n in ast.walk(m) if isinstance(n, ast.ClassDef)]
    for cls in classes:
        for stmt in cls.body:
            if annotated(stmt):
                declared.append(stmt.target.id)
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                a = stmt.args
                declared += [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    for yaml in sorted((root / "conf" / "method").glob("*.yaml")):
        for line in yaml.read_text(encoding="utf-8").splitlines():
            if (m := YAML_KEY.match(line)) and not line.lstrip().startswith("#"):
                declared.append(m.group(1))
    return Counter(d for d in declared if d in fields)


def declared(roots: dict[str, Path], parsed: dict[str, dict[str, ast.Module]]) -> str:
    fields, source = option_fields(*roots.values())
    counts = {name: declarations(roots[name], parsed[name], fields) for name in roots}
    rows = [[f"`{f}`"] + [counts[name][f] for name in roots] for f in fields]
    rows.append(["**total**"] + [sum(counts[name].values()) for name in roots])
    note = (
        f"Fields read from {source}. A declaration: an `__init__` parameter or an annotated class"
        " field of that name in a class of `persam/`, or a key in `conf/method/*.yaml`."
    )
    return note + "\n\n" + table(["field"] + list(roots), rows)


def import_graph(tree: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module path -> the persam modules it imports anywhere in its body, minus its own packages."""
    rel_of = {rel[:-3].replace("/", ".").removesuffix(".__init__"): rel for rel in tree}

    def resolve(name: str) -> str | None:  # the longest module prefix of a dotted name
        parts = name.split(".")
        found = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
        return next((d for d in found if d in rel_of), None)

    graph: dict[str, set[str]] = {rel: set() for rel in tree}
    for me, rel in rel_of.items():
        package = me.split(".") if rel.endswith("__init__.py") else me.split(".")[:-1]
        targets: list[str] = []
        for node in ast.walk(tree[rel]):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = [node.module] if node.module else []
                if node.level:  # relative: from the package, up level - 1 packages
                    base = package[: len(package) - node.level + 1] + base
                targets += [".".join(base + [a.name]) for a in node.names]
        for t in filter(None, map(resolve, targets)):
            if t != me and not me.startswith(t + "."):  # itself, or a package above it
                graph[rel].add(rel_of[t])
    return graph


def tarjan(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components; those of more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    sccs: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(s for s in sccs if len(s) > 1)


def cycle_through(graph: dict[str, set[str]], scc: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to it (breadth-first, inside)."""
    start, inside = scc[0], set(scc)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & inside):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return scc


def cycles(parsed: dict[str, dict[str, ast.Module]]) -> str:
    out = []
    for name, tree in parsed.items():
        graph = import_graph(tree)
        found = [
            f"* {len(scc)} modules: `"
            + " -> ".join(rel.removeprefix("persam/") for rel in cycle_through(graph, scc))
            + "`"
            for scc in tarjan(graph)
        ]
        out.append(f"**{name}**\n\n" + ("\n".join(found) if found else "none"))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="checkout before (a folder holding persam/)")
    parser.add_argument("after", type=Path, help="checkout after")
    args = parser.parse_args()
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    sources = {name: modules(root) for name, root in roots.items()}
    sizes = {n: {rel: len(s.splitlines()) for rel, s in m.items()} for n, m in sources.items()}
    parsed = {n: {rel: ast.parse(s, rel) for rel, s in m.items()} for n, m in sources.items()}
    sections = [
        ("Files and lines per folder of `persam/`", folders(sizes)),
        ("Lines per module", module_lines(sizes)),
        ("Longest functions", longest(parsed)),
        ("Declarations per method field", declared(roots, parsed)),
        ("Import cycles among persam modules (imports inside functions included)", cycles(parsed)),
    ]
    print("\n\n".join(f"## {title}\n\n{body}" for title, body in sections))


if __name__ == "__main__":
    main()
