"""A method's options, declared once.

`PerSAM(sam, **options)`, `PerSAMF(sam, **options)` and `GFSAM(sam, **options)` take these
fields; their config schemas (`persam.app.schema`, which types `conf/method/*.yaml` when Hydra
composes them) are derived from these classes, and `conf/method/persam.yaml` / `persam_f.yaml` /
`gf_sam.yaml` state only `_target_` and `name`. `python -m persam.run --cfg job` prints every field with its value. Each rule is
checked here, once (`__post_init__`), for the command line and the Python API alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Optional


class Choice(str, Enum):
    """A choice field: compares, prints and formats as its plain string."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Pooling(Choice):
    """Pooling of the reference features inside the mask: PerSAM's mean, PerSAM-F's (max+mean)/2."""

    mean = "mean"
    max_mean = "max_mean"


class ShotPooling(Choice):
    """k references: pool all masked cells together, or each image alone then average."""

    pixels = "pixels"
    images = "images"


class ShotPoints(Choice):
    """k references: the prior's points from the pooled target, or from each reference."""

    pooled = "pooled"
    each = "each"


class Backend(Choice):
    """How PerSAM-F's fit computes its loss (`persam.model.fit_backends`)."""

    taylor = "taylor"
    fused = "fused"
    reference = "reference"


class Fused(Choice):
    compile = "compile"
    eager = "eager"


class FitLoop(Choice):
    """What steps the PerSAM-F fit: a plain PyTorch loop, or the `trainer` group's Trainer."""

    plain = "plain"
    trainer = "trainer"


# GF-SAM, every reference mask empty: the official 14 x 14 centre square, or refuse. (The
# functional form: `raise` is a keyword; OmegaConf matches a member by its name.)
EmptyReference = Choice("EmptyReference", {"square": "square", "raise": "raise"})


def plain(value: Any) -> Any:
    """An enum member's value (what the code below the config works with)."""
    return value.value if isinstance(value, Enum) else value


def _choice(options: Any, name: str, kind: type[Choice]) -> None:
    value = getattr(options, name)
    try:
        setattr(options, name, kind(plain(value)))
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValueError(f"method.{name} must be one of {allowed}, got {value!r}") from None


def check_instances(instances: int | str) -> int | str:
    """`method.instances`: a positive integer or `auto`; anything else is a clear error."""
    if isinstance(instances, str):
        text = instances.strip().lower()
        if text == "auto":
            return "auto"
        instances = int(text) if text.lstrip("-").isdigit() else text
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 1:
        raise ValueError(
            f"method.instances must be a positive integer or 'auto', got {instances!r}: use 1 "
            f"for the paper's single instance, N for up to N instances per image, or auto"
        )
    return instances


@dataclass
class ScaleWeightsOptions:
    """PerSAM-F's fit of the 2 mixing weights (paper section 3.2; `persam.model.scale_weights`)."""

    steps: int = 1000  # AdamW steps on the reference mask
    lr: float = 1.0e-3
    eps: float = 1.0e-4
    weight_decay: float = 0.01
    init: float = 1.0 / 3.0  # every weight starts here
    alpha: float = 0.25  # sigmoid focal loss
    gamma: float = 2.0
    # taylor (moments, the default), fused (one pass per step) or reference (the official loop)
    backend: Backend = Backend.taylor
    fused: Fused = Fused.compile  # how the fused pass runs (taylor's fallback too)
    # plain (a PyTorch loop, ~0.1 ms a step) or trainer (the `trainer` group's lightning.Trainer,
    # ~1 ms a step: its accelerator, callbacks, precision, clipping and profiler apply); the
    # same weights either way
    loop: FitLoop = FitLoop.plain
    # A scale_weights.json (or the run folder holding it): reuse its weights, no fit.
    load: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional

    def __post_init__(self) -> None:
        for name, kind in (("backend", Backend), ("fused", Fused), ("loop", FitLoop)):
            _choice(self, name, kind)
        if int(self.steps) < 1:
            raise ValueError(f"method.scale_weights.steps={self.steps} must be at least 1.")

    def as_kwargs(self) -> dict:
        """The fields as plain values (`fit_scale_weights`' keyword arguments)."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


@dataclass
class PerSAMOptions:
    """Training-free PerSAM (paper section 3.1): every component is one switch.

    `shot_pooling` (`pixels` | `images`) and `shot_points` (`pooled` | `each`) matter only with
    k references (identical for one). `instances`: 1 (the paper), N, or `auto`. After each
    instance the similarity map is suppressed under its mask and the next peak prompts again
    (no re-encoding). N: at most N prompts; a mask that mostly overlaps the earlier ones (more
    than `instance_overlap` of it covered) or is empty is dropped. auto: stops at such a mask,
    after `max_instances`, or when the next peak is below `instance_threshold` relative to the
    first, measured from the map's minimum: (peak_k - min) < instance_threshold * (peak_1 - min),
    or when the next peak's raw similarity is below `instance_presence` x the target's
    similarity with its own reference: on an image without the concept every peak is low.
    """

    target_pooling: Pooling = Pooling.mean  # pooling of the reference features (location prior)
    positive_point: bool = True  # location prior: similarity arg-max as a positive point
    negative_point: bool = True  # location prior: similarity arg-min as a negative point
    guided_attention: bool = True  # target-guided attention in the decoder's cross-attention
    semantic_prompt: bool = True  # target-semantic prompting of the decoder's tokens
    refine_steps: int = 2  # cascaded post-refinement passes: 0, 1 or 2
    # k references: pool all masked cells together (pixels) or per image (images)
    shot_pooling: ShotPooling = ShotPooling.pixels
    # k references: points from the pooled target (pooled) or from each reference (each)
    shot_points: ShotPoints = ShotPoints.pooled
    # Instances per image: 1 (the paper), N, or auto (the similarity map is suppressed under
    # each found instance and the next peak prompts again; no re-encoding).
    instances: Any = 1
    # auto stops when (next peak - min) < this * (first peak - min);
    # measured: experiments/multi_instance/RESULTS.md
    instance_threshold: float = 0.9
    instance_overlap: float = (
        0.5  # a new mask more than this covered by earlier ones is a duplicate
    )
    max_instances: int = 10  # auto never prompts more than this
    # auto: a further instance's raw similarity peak must reach this fraction of the target's
    # peak on its own reference (`Target.self_peak`), so an image without the concept gives
    # the paper's one instance (measured: experiments/multi_instance/RESULTS.md)
    instance_presence: float = 0.7

    def __post_init__(self) -> None:
        for name, kind in (
            ("target_pooling", Pooling),
            ("shot_pooling", ShotPooling),
            ("shot_points", ShotPoints),
        ):
            _choice(self, name, kind)
        if self.refine_steps not in (0, 1, 2):
            raise ValueError(
                f"method.refine_steps={self.refine_steps} is not allowed: choose one of 0, 1, 2 "
                f"(refine_steps must be 0, 1 or 2)."
            )
        self.instances = check_instances(self.instances)
        if not 0.0 <= self.instance_threshold <= 1.0:
            raise ValueError(
                f"method.instance_threshold must be in [0, 1], got {self.instance_threshold}"
            )
        if not 0.0 < self.instance_overlap <= 1.0:
            raise ValueError(
                f"method.instance_overlap must be in (0, 1], got {self.instance_overlap}"
            )
        if not 0.0 <= self.instance_presence <= 1.0:
            raise ValueError(
                f"method.instance_presence must be in [0, 1], got {self.instance_presence}"
            )
        if not 1 <= int(self.max_instances) <= 255:
            raise ValueError(f"method.max_instances must be in 1..255, got {self.max_instances}")


@dataclass
class PerSAMFOptions(PerSAMOptions):
    """PerSAM-F (paper section 3.2): PerSAM's options with what differs, plus the fit."""

    target_pooling: Pooling = Pooling.max_mean
    negative_point: bool = False
    guided_attention: bool = False
    semantic_prompt: bool = False
    scale_weights: ScaleWeightsOptions = field(default_factory=ScaleWeightsOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.scale_weights, ScaleWeightsOptions):
            self.scale_weights = ScaleWeightsOptions(**dict(self.scale_weights or {}))


# GF-SAM's working size must hold the empty-reference centre square (14 x 14 pixels).
GF_SAM_MIN_SIZE = 14


@dataclass
class GFSAMOptions:
    """GF-SAM (`persam.model.gf_sam`): every component one switch; the defaults are the
    official code's (ANDYZAQ/GF-SAM)."""

    image_size: int = 1024  # references and query are resized to this square (official: 1024)
    # zero the cross map where the background prior's mean map exceeds it
    negative_filter: bool = True
    max_points: Optional[int] = 128  # noqa: UP045 - the cap on the points (null: no cap)
    points_per_batch: int = 64  # points decoded by SAM at a time
    mask_growth: bool = True  # accept a component's masks one by one (false: its union decides)
    point_consistency: bool = True  # keep points whose own component is the most self-similar
    consistency_vote: bool = True  # per-component majority vote of the consistency flags
    fallback: bool = True  # no point selected: the best-scored undecided point's mask
    # every reference mask empty: square (the official 14 x 14 centre square) | raise
    empty_reference: EmptyReference = EmptyReference.square

    def __post_init__(self) -> None:
        _choice(self, "empty_reference", EmptyReference)
        if self.max_points is not None and int(self.max_points) < 1:
            raise ValueError(f"method.max_points must be >= 1 or null, got {self.max_points}")
        if int(self.points_per_batch) < 1:
            raise ValueError(f"method.points_per_batch must be >= 1, got {self.points_per_batch}")
        if int(self.image_size) < GF_SAM_MIN_SIZE:
            raise ValueError(
                f"method.image_size must be >= {GF_SAM_MIN_SIZE}, got {self.image_size}"
            )


def options_of(cls: type, values: dict) -> Any:
    """`cls` (an options dataclass) from `values`; an unknown field is a TypeError naming the
    fields that exist."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(unknown)}: the fields are "
            f"{', '.join(f.name for f in fields(cls))}"
        )
    return cls(**values)
