"""The front door: the README and docs/ pages link to files that exist, every extra they or the
package's messages tell users to install is declared under exactly that name (and that name is
the one pip normalises it to), the README stays one screen, and its test command is the one
`make test` and `.ci/run` run. Reads files only: no install, no subprocess."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTRA_NAMED = re.compile(r"persam\[([A-Za-z0-9_.,\- ]+)\]|\"\.\[([A-Za-z0-9_.,\- ]+)\]\"")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^(```|~~~).*?^\1", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _normalised(name: str) -> str:
    """PEP 685 / PEP 503 normalisation of an extra's name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_extras() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["optional-dependencies"]


def _require_extras() -> dict[str, set[str]]:
    """Every extra a `require(module, extra, backbone)` call in persam/ names, by file (the
    argument is a string or a module-level constant)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "persam").rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {
            t.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for t in node.targets
            if isinstance(t, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name != "require":
                continue
            arg = node.args[1]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                value = arg.value
            elif isinstance(arg, ast.Name) and arg.id in constants:
                value = constants[arg.id]
            else:
                pytest.fail(f"{path}: require(..., {ast.unparse(arg)}, ...): not a known extra")
            found.setdefault(value, set()).add(str(path.relative_to(ROOT)))
    return found


def _named_extras() -> dict[str, set[str]]:
    """Every extra named as `persam[...]` or `".[...]"` in the README, docs/, the package's
    source and configs, the Makefile and .ci/run, by where it is named."""
    files = [
        *PAGES,
        *sorted((ROOT / "persam").rglob("*.py")),
        *sorted((ROOT / "conf").rglob("*.yaml")),
        ROOT / "Makefile",
        ROOT / ".ci" / "run",
    ]
    found: dict[str, set[str]] = {}
    for path in files:
        text = path.read_text()
        for m in EXTRA_NAMED.finditer(text):
            for name in (m.group(1) or m.group(2)).split(","):
                name = name.strip()
                if name and "$" not in name and "<" not in name:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    make = (ROOT / "Makefile").read_text()
    extras = re.search(r"^EXTRAS\s*\?=\s*(\S+)", make, re.M)
    assert extras, "the Makefile has no EXTRAS line"
    for name in extras.group(1).split(","):
        found.setdefault(name, set()).add("Makefile (EXTRAS)")
    for name, where in _require_extras().items():
        found.setdefault(name, set()).update(where)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(page: Path):
    """`persam/model/refine.py`, `conf/method/*.yaml`, ...: each names a file or folder of this
    checkout (a module moved in a restructuring is renamed here too)."""
    named = re.findall(
        r"(?<![\w./-])((?:persam|conf|tests|benchmarks|experiments|docs)/[\w./*<>-]*)",
        page.read_text(),
    )
    missing = sorted(
        {p.rstrip(".") for p in named if "<" not in p and not list(ROOT.glob(p.rstrip(".")))}
    )
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for m in LINK.finditer(_prose(page.read_text())):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading '#{anchor}' in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {
        (README.parent / m.group(1).partition("#")[0]).resolve()
        for m in LINK.finditer(_prose(README.read_text()))
    }
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_is_one_screen():
    n = len(README.read_text().splitlines())
    assert n <= 150, f"README.md has {n} lines (at most 150); move details to docs/"


def test_declared_extras_are_normalised():
    bad = [n for n in _declared_extras() if n != _normalised(n)]
    assert not bad, f"pyproject.toml extras not in pip's normalised form (PEP 685): {bad}"


def test_every_extra_named_is_declared_verbatim():
    declared = set(_declared_extras())
    named = _named_extras()
    assert _require_extras(), "no require(...) call found: the message check would be vacuous"
    wrong = {
        name: sorted(where)
        for name, where in named.items()
        if name not in declared or name != _normalised(name)
    }
    assert not wrong, f"extras named but not declared verbatim and normalised: {wrong}"


def test_the_readme_extras_table_lists_every_extra():
    text = README.read_text()
    install = text[text.index("## Install") :]
    install = install[: install.index("\n## ", 1)]
    rows = re.findall(r"^\| `([^`]+)` \|", install, re.M)
    assert sorted(rows) == sorted(_declared_extras()), (
        f"README's extras table {sorted(rows)} != pyproject.toml {sorted(_declared_extras())}"
    )


def test_readme_test_command_is_make_test_and_ci_runs_it():
    make = (ROOT / "Makefile").read_text()
    command = re.search(r"^PYTEST\s*\?=\s*(.+?)\s*$", make, re.M).group(1)
    assert re.search(r"^test: install-all$", make, re.M), "make test installs every extra first"
    assert command in README.read_text(), f"the README does not give the test command {command!r}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b.*--durations=15", ci, re.M), ".ci/run runs `make test`"
    assert "PERSAM_REQUIRE_GOLDEN=1" in ci


def test_make_run_installs_no_extra():
    make = (ROOT / "Makefile").read_text()
    run = re.search(r"^run:(.*)$", make, re.M).group(1).split()
    core = re.search(r"^\$\(VENV\)/\.core:.*\n((?:\t.*\n)+)", make, re.M).group(1)
    assert run == ["install-core"], f"make run depends on {run}"
    assert "[" not in core and "sam2" not in core, f"the core install names an extra:\n{core}"
