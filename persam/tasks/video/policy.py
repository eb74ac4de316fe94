"""The per-frame policy of video segmentation (the `video` config group).

`mode=official` is the released scripts' behaviour (`persam_video.py`, `persam_video_f.py`),
quirks included; `mode=tracked` is the same method with their defects fixed, each fix a switch.
The script parameters (top-k points, the x215 reference mask, the box margin, the centre point,
the `large` pick, PerSAM-F's fit) are shared by both modes; the switches only act in `tracked`.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("official", "tracked")


@dataclass
class VideoPolicy:
    """How each frame is prompted and how objects are handed over to the next frame.

    Script parameters (the official argparse defaults):
      topk: positive points from the location prior; None = the script's own (2 PerSAM, 1 PerSAM-F).
      mask_value: the reference mask is drawn as value * mask in the R channel (`exp`, 215).
      box_margin: the previous frame's box is expanded by this many pixels (`threshold`, 10).
      box_prompt: prompt step 1 with that box (and take the centre point from it).
      center_point: add the box centre as a positive point.
      large_pick: PerSAM prompts step 2 with the "largest" step-1 mask (else mask 0).
      fit_steps, fit_lr: PerSAM-F's fit on frame 0 (800 steps, lr 4e-4), replacing the image
        defaults of `method.scale_weights`; its other fields (eps, fused, ...) still apply.

    Tracked-mode switches (ignored when mode=official):
      keep_identity: each object keeps its own box source by id; a vanished object does not
        hand its slot (and box) to the next one.
      refind_lost: a lost object is searched again from its location prior alone (points, no
        box) and comes back when its similarity peak reaches `refind_ratio` x its frame-0 peak.
      true_largest: the `large` pick takes the mask with the most pixels (official: the largest
        count modulo 256, a uint8 overflow).
      safe_empty: an empty mask never crashes a pass (no box prompt instead); an object whose
        final mask is empty is lost for that frame.
      absent_ratio: an object whose similarity peak falls below absent_ratio x its frame-0 peak
        is absent in that frame (0 turns this off).
      batch_objects: the objects of a frame go through SAM's decoder together, one call per
        cascade step (the same arithmetic per object, up to float rounding).
    """

    mode: str = "tracked"
    topk: int | None = None
    mask_value: int = 215
    box_margin: int = 10
    box_prompt: bool = True
    center_point: bool = True
    large_pick: bool = True
    fit_steps: int = 800
    fit_lr: float = 4e-4
    keep_identity: bool = True
    refind_lost: bool = True
    true_largest: bool = False
    safe_empty: bool = True
    refind_ratio: float = 0.75
    absent_ratio: float = 0.75
    batch_objects: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"video.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.topk is not None and int(self.topk) < 1:
            raise ValueError(f"video.topk must be >= 1 or null; got {self.topk}")
        if not 0 <= int(self.mask_value) <= 255:
            raise ValueError(f"video.mask_value must be in 0..255; got {self.mask_value}")
        if self.center_point and not self.box_prompt:
            raise ValueError(
                "video.center_point=true needs video.box_prompt=true (the centre is the box's); "
                "set video.center_point=false to prompt without a box"
            )

    @property
    def official(self) -> bool:
        return self.mode == "official"

    def points_for(self, fine_tuned: bool) -> int:
        """Top-k positive points: the configured value or the script's default."""
        if self.topk is not None:
            return int(self.topk)
        return 1 if fine_tuned else 2
