"""`python -m persam.video` — segment every object of frame 0 through videos (a Hydra app).

python -m persam.video                                   # tracked PerSAM, synthetic videos
python -m persam.video method=persam_f video=official data=davis data.root=/data/DAVIS
python -m persam.video -m video=official,tracked method=persam,persam_f

The same run as `persam.run` (backbone, method, data, logger, runner) with the `video` config
group as the task's per-frame policy; returns the overall J&F.
"""

from __future__ import annotations

import persam.app.entry  # noqa: F401 - first: the thread policy, before torch is loaded

# isort: split

import logging  # noqa: E402
import sys

import hydra
from omegaconf import DictConfig

from persam.app.entry import build
from persam.app.preflight import resume_argv
from persam.conf import CONFIG_DIR
from persam.run import run

log = logging.getLogger("persam.video")


def policy(cfg: DictConfig):
    """The `video` config as a `VideoPolicy`; a bad field stops with its message (exit 2)."""
    return build(cfg.video, refuse=(Exception,), label="video")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="video")
def main(cfg: DictConfig) -> float | None:
    return run(
        cfg,
        task_options={"policy": policy(cfg)},
        runs=("persam.tasks.video.task.VideoTask",),
        entry="python -m persam.video",
    ).get("jf")


def cli() -> None:
    """`python -m persam.video` / `persam-video`; `resume=true hydra.run.dir=DIR` alone continues
    the run recorded in DIR with its own overrides (as `persam.run.cli`)."""
    sys.argv[1:] = resume_argv(sys.argv[1:])
    main()


if __name__ == "__main__":
    sys.exit(cli())
