"""What every entry point (`persam.run`, `persam.video`, `persam.train`, `persam.demo`) does the
same way, written once: the thread policy (on import, before torch is loaded) and building a
config node with `instantiate`, where an error the user can fix is one line and exit 2.

    from persam.app.entry import build   # first import of an entry point: sets the policy
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

# OpenMP threads that spin while waiting for a descheduled sibling cost the PerSAM-F fit and
# training 3-5x on a machine shared with other jobs; passive waiting costs nothing measurable on
# an idle one. Must be set before torch (libgomp) is loaded; export OMP_WAIT_POLICY=ACTIVE to
# override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("persam")


def build(
    node: Any,
    refuse: tuple[type[BaseException], ...] = (),
    label: str = "",
    describe: Callable[[BaseException], str] | None = None,
    **runtime: Any,
) -> Any:
    """`instantiate(node, **runtime)`; an error of a kind in `refuse` raised while building (Hydra
    wraps it in an `InstantiationException`) is logged in one line, `label: message` (or
    `describe(error)`), and the program exits with status 2. Other errors propagate."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **runtime)
    except InstantiationException as exc:
        cause = exc.__cause__
        if refuse and isinstance(cause, refuse):
            text = describe(cause) if describe else str(cause)
            log.error("%s%s", f"{label}: " if label else "", text)
            raise SystemExit(2) from exc
        raise
