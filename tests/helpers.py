"""Small builders shared by tests: tiny PerSeg folders and running the real entry points.

Three ways to run an entry point (`python -m persam.run ...`):

- `run_app`: the module's own console function (`persam.run.cli`, `persam.video.cli`,
  `persam.train.main`, `persam.report.main`) called in this process with the argv, working folder
  and environment the command would have; its exit status and its output come back as from
  `run_cli`. Same code path as the console script from argument parsing (Hydra's included) to
  `sys.exit`, without starting an interpreter and importing torch again (seconds per run).
- `run_cli`: the real command in a child process, for what only a process shows (the console
  script, signals, launchers that start processes, imports of a fresh interpreter).
- `cli_process`: the same child, started and left running (for Ctrl-C and kill tests).

Every child is started in its own session, with SIGINT deliverable whatever this process
inherited, and is killed (its whole group) and reaped when the test is done with it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# A fast random-init SAM for end-to-end tests (small encoder, 256 px input, SAM's full decoder):
# `debug=tiny`'s backbone (conf/debug/tiny.yaml).
SMALL_BACKBONE = [
    "backbone=tiny",
    "backbone.encoder_embed_dim=32",
    "backbone.encoder_depth=1",
    "backbone.encoder_num_heads=1",
    "backbone.encoder_global_attn_indexes=[0]",
    "backbone.image_size=256",
]

# A small `build_architecture` (8 x 8 grid, 128 px input) for the training code's unit tests.
SMALL_ARCH = dict(
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=1,
    encoder_global_attn_indexes=[0],
    image_size=128,
    vit_patch_size=16,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def write_object(root: Path, name: str, n: int = 3, size=(96, 128), seed: int = 0) -> None:
    """A PerSeg object: n images (a bright disc on noise) and PerSeg-style masks (BGR 0,0,128)."""
    rng = np.random.default_rng(seed)
    (root / "Images" / name).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w, 3), np.uint8)
        cx, cy, r = int(rng.integers(25, w - 25)), int(rng.integers(25, h - 25)), 18
        cv2.circle(img, (cx, cy), r, (40, 200, 250), -1)
        cv2.circle(mask, (cx, cy), r, (0, 0, 128), -1)
        cv2.imwrite(str(root / "Images" / name / f"{i:02d}.jpg"), img)
        cv2.imwrite(str(root / "Annotations" / name / f"{i:02d}.png"), mask)


def _child_env(env: dict | None) -> dict:
    full_env = dict(os.environ)
    full_env.setdefault("WANDB_MODE", "offline")
    full_env.update(env or {})
    return full_env


@contextlib.contextmanager
def _sigint_deliverable() -> Iterator[None]:
    """While a child is started: SIGINT handled here, so that the child starts with SIGINT at
    its default (a handled signal is reset by exec, an ignored one is inherited). A background
    job of a non-interactive shell starts with SIGINT ignored; its children would never see a
    Ctrl-C. Main thread only (pytest runs tests there)."""
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread
        previous = None
    if previous is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _end(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (it leads its own session) and reap the child."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    else:  # the child is gone; anything it left in its group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def cli_process(
    args: list[str], cwd: Path, module: str = "persam.run", env=None, **popen
) -> Iterator[subprocess.Popen]:
    """`python -m <module> <args>` started in its own session with SIGINT deliverable; yields
    the Popen (stdout/stderr as `popen` asks, text mode); always killed and reaped on exit."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    with _sigint_deliverable():
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=_child_env(env),
            text=True,
            start_new_session=True,
            **popen,
        )
    try:
        yield proc
    finally:
        _end(proc)


def run_cli(args: list[str], cwd: Path, module: str = "persam.run", timeout: int = 900, env=None):
    """Run `python -m <module> <args>` as a subprocess; returns the CompletedProcess."""
    with cli_process(args, cwd, module, env) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


#: The function each entry point's `if __name__ == "__main__"` calls (its console script).
ENTRY = {
    "persam.run": "cli",
    "persam.video": "cli",
    "persam.train": "main",
    "persam.report": "main",
}


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Hydra configures logging for each job (console handler, `<job>.log` in the run folder):
    put back the handlers, levels and flags of every logger afterwards, closing Hydra's."""
    manager = logging.Logger.manager
    loggers = [
        logging.getLogger(),
        *(v for v in manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    saved = {id(lg): (lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg in [logging.getLogger(), *manager.loggerDict.values()]:
            if not isinstance(lg, logging.Logger):
                continue
            kept = saved.get(id(lg))
            handlers = kept[2] if kept else []
            for h in list(lg.handlers):
                if h not in handlers:
                    lg.removeHandler(h)
                    h.close()
            if kept:
                _, level, handlers, propagate, disabled = kept
                lg.setLevel(level)
                lg.handlers[:] = handlers
                lg.propagate, lg.disabled = propagate, disabled


def run_app(args: list[str], cwd: Path, module: str = "persam.run", env=None):
    """`python -m <module> <args>` run in this process (see the module docstring): sys.argv,
    the working folder and `env` set as the command would have them, stdout/stderr captured, the
    exit status taken from `SystemExit` (an uncaught exception: its traceback and status 1, as
    the interpreter does). Returns a CompletedProcess like `run_cli`."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    entry = getattr(importlib.import_module(module), ENTRY[module])
    import persam.run

    persam.run._BACKBONE.clear()  # a fresh process builds its backbone (and draws its RNG)
    argv, old_cwd, old_env = sys.argv, os.getcwd(), dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        sys.argv = [module, *map(str, args)]
        os.environ.update(_child_env(env))
        os.chdir(cwd)
        with _logging_restored(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry()
            except SystemExit as exc:
                code = exc.code
            except Exception:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        persam.run._BACKBONE.clear()
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_in_process(
    overrides: list[str], run_dir: Path, config_name: str = "config", task=None
) -> dict:
    """`persam.run.run` (or `task`, an entry point's task function) in this process (so that
    caplog sees its log), with the config Hydra composes for `python -m persam.run <overrides>
    hydra.run.dir=<run_dir>` (`config_name`: another entry point's main config); returns what
    it returns (`run`: the metrics summary)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from persam.conf import CONFIG_DIR
    from persam.run import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[*overrides, f"hydra.run.dir={run_dir}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to the task function
    try:
        return (task or run)(cfg)
    finally:
        HydraConfig.instance().cfg = None
