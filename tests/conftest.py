"""Shared fixtures. Golden data is read in place from ../shared/golden (or $PERSAM_GOLDEN).

Tests that need it skip where it is absent (a user's clone); with PERSAM_REQUIRE_GOLDEN=1
(set by .ci/run) a missing golden folder is a failure instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("PERSAM_GOLDEN", ROOT.parent / "shared" / "golden"))
GOLDEN_OBJECTS = ("cat", "colorful_sneaker", "duck_toy")

# OpenMP threads that spin while waiting cost several times the CPU on a busy machine (see
# persam/run.py); set before anything imports torch, for this process and its children.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: each takes its
# share of threads (before torch is loaded), so two workers on two cores do not fight.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def golden_path(marker: str = "tiny_sam.pth") -> Path:
    """The golden folder, when `marker` (a file inside it) is present; else skip (or fail)."""
    if not (GOLDEN / marker).is_file():
        reason = (
            f"golden data not found at {GOLDEN} (expected ../shared/golden beside the repo, or set "
            f"PERSAM_GOLDEN; missing {marker})"
        )
        if os.environ.get("PERSAM_REQUIRE_GOLDEN") == "1":
            pytest.fail(reason + "; PERSAM_REQUIRE_GOLDEN=1 makes this a failure")
        pytest.skip(reason)
    return GOLDEN


@pytest.fixture(scope="session")
def golden() -> Path:
    return golden_path()


@pytest.fixture(scope="session")
def golden_gfsam() -> Path:
    """The official GF-SAM's outputs (../shared/golden/gfsam, its README.md)."""
    return golden_path("gfsam/README.md") / "gfsam"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """The cache folder of this test session (embeddings, generated data, compiled kernels):
    a fresh one per `pytest` command, shared by its pytest-xdist workers (the folder above each
    worker's own basetemp), since every writer of the cache is safe beside another. Tests that
    count cache hits use a folder of their own."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "persam-cache"


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache, monkeypatch):
    """Every test reads and writes the session's cache, never the user's."""
    monkeypatch.setenv("PERSAM_CACHE_DIR", str(session_cache))


@pytest.fixture(scope="session")
def synthetic_heldout(tmp_path_factory) -> Path:
    """The default held-out synthetic split (`ensure_synthetic(root, "heldout")`: 6 objects x 4
    images, seed 0), generated once per session in a folder of its own (not the cache, where runs
    with other sizes regenerate theirs). Read it; copy it before changing anything."""
    from persam.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), split="heldout")


@pytest.fixture(scope="session")
def tiny_arch(golden) -> dict:
    return json.loads((golden / "tiny_sam.json").read_text())


@pytest.fixture(scope="session")
def tiny_sam(golden, tiny_arch):
    from persam.backbones.sam import build_sam

    return build_sam(name="tiny", checkpoint=golden / "tiny_sam.pth", device="cpu", **tiny_arch)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
