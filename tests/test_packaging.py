"""A normal (non-editable) install works from any folder: the configs ship inside the wheel.

Builds the wheel from a clean copy of the repository (the files git knows, links kept as links),
checks that every ``conf/**/*.yaml`` is inside it as ``persam/conf/...``, installs it into a
fresh folder and runs the entry points from an unrelated folder with only that folder (and the
dependencies of this interpreter) importable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow


def _clean_copy(dest: Path) -> None:
    """The repository's files as git sees them (tracked, or new and not ignored)."""
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout: the packaging test copies the files git knows")
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, names):
        src = ROOT / os.fsdecode(raw)
        if not src.is_symlink() and not src.exists():  # deleted in the working tree
            continue
        target = dest / os.fsdecode(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def _run(args: list[str], cwd: Path, site: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(site), PERSAM_CACHE_DIR=str(cache), WANDB_MODE="offline", OMP_NUM_THREADS="1"
    )
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_ships_the_configs_and_runs_from_any_folder(tmp_path: Path) -> None:
    src, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    elsewhere, cache = tmp_path / "elsewhere", tmp_path / "cache"
    _clean_copy(src)
    assert (src / "persam" / "conf").is_symlink()  # the package links to conf/ in the repo

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("persam-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        inside = set(zf.namelist())
    configs = sorted(p.relative_to(src).as_posix() for p in (src / "conf").rglob("*.yaml"))
    assert len(configs) > 20
    missing = [c for c in configs if f"persam/{c}" not in inside]
    assert not missing, f"configs missing from the wheel: {missing}"
    assert "persam/conf/__init__.py" in inside
    assert "persam/weights/embedded_sam.pth" in inside

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (site / "persam" / "conf").is_symlink()
    elsewhere.mkdir()

    where = _run(
        [sys.executable, "-c", "import persam.conf as c; print(c.CONFIG_DIR)"],
        elsewhere,
        site,
        cache,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == site / "persam" / "conf"

    tiny = ["data.num_objects=1", "data.images_per_object=2", "logger=none", "progress=false"]
    module = _run(
        [sys.executable, "-m", "persam.run", *tiny, "hydra.run.dir=runs/module"],
        elsewhere,
        site,
        cache,
    )
    assert module.returncode == 0, module.stderr[-3000:]
    script = _run(
        [sys.executable, str(site / "bin" / "persam-run"), *tiny, "hydra.run.dir=runs/script"],
        elsewhere,
        site,
        cache,
    )
    assert script.returncode == 0, script.stderr[-3000:]
    a = json.loads((elsewhere / "runs" / "module" / "metrics.json").read_text())
    b = json.loads((elsewhere / "runs" / "script" / "metrics.json").read_text())
    assert a["n_objects"] == b["n_objects"] == 1 and a["n_failed"] == 0
    assert a["miou"] == b["miou"] and a["miou"] > 0.3  # the shipped embedded SAM segments

    for name in ("persam-train", "persam-report"):
        helped = _run([sys.executable, str(site / "bin" / name), "--help"], elsewhere, site, cache)
        assert helped.returncode == 0, f"{name} --help: {helped.stderr[-3000:]}"
