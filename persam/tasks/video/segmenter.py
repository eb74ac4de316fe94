"""Video object segmentation with PerSAM / PerSAM-F: every object of frame 0, frame after frame.

    frame 0: per object, reference feature (location prior) [+ PerSAM-F weights fitted on it]
    frame i: encode once (cached) -> per object: location prior (top-k points) + the previous
             frame's box and centre -> three-step cascade -> full-resolution logits
             -> merge by arg-max (background where every logit <= 0) -> next frame's boxes

The components are the image path's (`location_prior`, `refine`, `scale_weights`, `encoder`);
`VideoPolicy` says where the video scripts differ. Shapes: H x W frames, n objects, C channels,
h x w the encoder grid; points are (x, y) and boxes (x1, y1, x2, y2) in frame pixels.

`VideoSegmenter.recorder`, when set to a dict, receives the intermediates under the keys of the
official recording (`obj1/fore_feat`, `f01/obj1/topk_xy`, ...; see
../shared/golden/video/README.md): the golden tests observe the stages there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from persam.model import location_prior
from persam.model.decoder import decode
from persam.model.method import PerSAMF
from persam.model.refine import EmptyMaskError, cascaded_refinement_batch, mask_box
from persam.model.scale_weights import FitResult, fit_scale_weights, mix_masks
from persam.tasks.video.policy import VideoPolicy

log = logging.getLogger(__name__)


class EmptyObjectError(ValueError):
    """An object id of the frame-0 annotation has no pixel."""


@dataclass
class VideoObject:
    """One target of the sequence, learned on frame 0."""

    id: int  # label in the annotation
    feature: torch.Tensor  # (C,) pooled reference feature ((max + mean) / 2), not normalised
    ref_peak: float  # similarity peak of the object on frame 0
    weights: np.ndarray | None = None  # (3,) PerSAM-F mixing weights
    fit: FitResult | None = None
    warnings: list[str] = field(default_factory=list)
    target: Any = None  # a per-frame method's learned target (`PerFrameSegmenter`)


@dataclass
class FrameOutput:
    """The label map of one frame and the prompts used, per object id."""

    index: int
    labels: np.ndarray  # (H, W) uint8
    points: dict[int, np.ndarray] = field(default_factory=dict)  # id -> (N, 2) (x, y)
    warnings: list[str] = field(default_factory=list)
    image: np.ndarray | None = None  # (H, W, 3) the frame itself


def labels_of(label_map: np.ndarray) -> list[int]:
    """The sorted non-zero labels of a label map (H, W)."""
    values = np.unique(label_map)
    return [int(v) for v in values if v != 0]


def merge_logits(logits: list[np.ndarray], ids: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Arg-max over [zeros; logits of each object] -> (H, W) uint8 label map.

    Background wins wherever every logit is <= 0; ties go to the earlier entry.
    """
    stack = np.concatenate(
        [np.zeros((1, *shape), dtype=np.float32)] + [lg[None].astype(np.float32) for lg in logits]
    )
    index = np.argmax(stack, axis=0)
    lut = np.array([0, *ids], dtype=np.uint8)
    return lut[index]


def official_handover(label_map: np.ndarray) -> list[np.ndarray]:
    """The scripts' box sources for the next frame: the masks of the labels *present*, in
    label order. Slot j takes the j-th of them, so when a label vanishes every later object
    gets the next survivor's box, the last slot(s) stop, and the slot count never grows again."""
    return [label_map == v for v in labels_of(label_map)]


def tracked_handover(label_map: np.ndarray, ids: list[int]) -> dict[int, np.ndarray | None]:
    """Box sources by object id: each object's own mask, None when its label vanished."""
    present = set(labels_of(label_map))
    return {i: (label_map == i) if i in present else None for i in ids}


class VideoSegmenter:
    """Segments the objects of a sequence with `method` (a bound PerSAM or PerSAMF).

    The method gives the backbone and cached encoder (`method.encoder`), whether it is PerSAM-F
    (`method.scale_weights`) and that fit's options and Trainer settings.
    """

    #: A dict that receives the intermediates (the golden tests' observation point), or None.
    recorder: dict | None = None

    def __init__(self, method, policy: VideoPolicy) -> None:
        self.method = method
        self.policy = policy
        self.fine_tuned = isinstance(method, PerSAMF)
        self.topk = policy.points_for(self.fine_tuned)

    @property
    def encoder(self):
        return self.method.encoder

    # -- frame 0 ---------------------------------------------------------------------------
    def learn(
        self,
        image: np.ndarray,
        label_map: np.ndarray,
        logger=None,
        name: str = "",
    ) -> list[VideoObject]:
        """One `VideoObject` per non-zero label of `label_map` (H, W), in label order."""
        ids = [i for i in labels_of(label_map) if i != 255]  # 255: DAVIS void, not an object
        if not ids:
            raise EmptyObjectError("the first frame's annotation has no object (all background)")
        predictor = self.encoder.set_image(image)
        objects = []
        for slot, obj_id in enumerate(ids):
            gt = label_map == obj_id
            key = f"obj{slot + 1}"
            mask_rgb = location_prior.mask_image(gt, self.policy.mask_value)
            values = location_prior.reference_grid_values(predictor, mask_rgb)
            grid = values > 0
            feats = predictor.features.squeeze(0).permute(1, 2, 0)[grid]
            warnings = []
            if feats.shape[0] == 0:
                msg = f"object {obj_id} covers no cell of the {tuple(grid.shape)} feature grid"
                if self.policy.official:
                    # The scripts keep the mean of an empty set (NaN) and go on.
                    msg += "; official mode keeps a NaN feature as the scripts do"
                    feature = feats.mean(0)
                else:
                    best = torch.argmax(values)
                    cell = predictor.features.squeeze(0).flatten(1)[:, best][None]
                    feature = location_prior.target_embedding(cell, "max_mean")
                    msg += "; its best-covered cell is used"
                log.warning(msg)
                warnings.append(msg)
            else:
                feature = location_prior.target_embedding(feats, "max_mean")
            sim0 = location_prior.similarity_map(predictor, feature)
            obj = VideoObject(
                id=obj_id, feature=feature, ref_peak=float(sim0.max()), warnings=warnings
            )
            if self.recorder is not None:
                self.recorder[f"{key}/ref_mask_grid"] = grid.numpy()
                self.recorder[f"{key}/ref_mask_grid_value"] = values.numpy()
                self.recorder[f"{key}/fore_feat"] = (feature / feature.norm()).numpy()[None]
            if self.fine_tuned:
                self._fit(predictor, obj, sim0, gt, key, logger, name)
            objects.append(obj)
        return objects

    def _fit(self, predictor, obj: VideoObject, sim0, gt, key, logger, name) -> None:
        """PerSAM-F: fit the mixing weights on frame 0 with the frame-1 prompts of the object."""
        box = mask_box(gt, self.policy.box_margin) if self.policy.box_prompt else None
        coords, labels = self._prompt(sim0, box)
        with torch.no_grad():
            high, _, _ = decode(
                predictor,
                None if coords is None else coords[None],
                None if labels is None else labels[None],
                None if box is None else box[None, :],
                return_logits=True,
            )
            high = high[0]
        options = dict(self.method.scale_weights)
        options.update(steps=self.policy.fit_steps, lr=self.policy.fit_lr)
        fit = fit_scale_weights(
            torch.as_tensor(high),
            torch.as_tensor(gt),
            logger=logger,
            trainer=self.method.trainer,
            log_name=f"fit/{name}/{obj.id}/loss" if name else f"fit/{obj.id}/loss",
            **options,
        )
        obj.fit = fit
        obj.weights = np.asarray(fit.weights, dtype=np.float32)
        if self.recorder is not None:
            self.recorder[f"{key}/fit_points"] = coords
            self.recorder[f"{key}/fit_labels"] = labels
            self.recorder[f"{key}/fit_box"] = box
            self.recorder[f"{key}/losses"] = fit.losses
            self.recorder[f"{key}/weights"] = obj.weights

    # -- prompts ---------------------------------------------------------------------------
    def _prompt(self, sim: torch.Tensor, box: np.ndarray | None):
        """Top-k points of `sim` (H, W), then the centre of `box` (the box source's expanded
        box, None without one)."""
        coords, labels = location_prior.select_points(sim, negative=False, topk=self.topk)
        if box is not None and self.policy.center_point:
            centre = np.array([[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]], dtype=np.int64)
            coords = np.concatenate([coords, centre])
            labels = np.concatenate([labels, [1]])
        return coords, labels

    # -- objects on one frame -------------------------------------------------------------
    # Over 80 lines: the video scripts' three-step cascade for a batch of objects, with every
    # stage recorded under the official recording's keys (the golden video test reads them).
    def _segment_objects(self, predictor, objects, sources, keys, sims=None):
        """The three-step cascade for objects that share a prompt layout (all with a box
        source, or all without), each step one decoder call for all of them.

        `sims`: the objects' similarity maps (H, W) when already computed.
        Returns one ((H, W) logits or None, coords (N, 2), warnings) per object.
        """
        policy = self.policy
        official = policy.official
        thr = predictor.model.mask_threshold
        rec = {} if self.recorder is None else self.recorder
        prompts, boxes = [], []
        for b, (obj, source, key) in enumerate(zip(objects, sources, keys, strict=True)):
            sim = sims[b] if sims is not None and sims[b] is not None else None
            if sim is None:
                sim = location_prior.similarity_map(predictor, obj.feature)
            box = None
            if source is not None and policy.box_prompt:
                box = mask_box(source, policy.box_margin)
            coords, labels = self._prompt(sim, box)
            prompts.append((coords, labels))
            boxes.append(box)
            if self.recorder is not None:
                rec[f"{key}/topk_xy"] = coords[: self.topk]
                rec[f"{key}/sim_topk_plus1"] = sim.flatten().topk(self.topk + 1)[0].numpy()
                if box is not None:
                    rec[f"{key}/center"] = coords[self.topk :]
                    rec[f"{key}/box_prompt"] = box
        coords = np.stack([c for c, _ in prompts])
        labels = np.stack([lb for _, lb in prompts])
        box_batch = None if boxes[0] is None else np.stack(boxes)
        # Step 1: points (+ expanded box), SAM's three masks with their full-resolution logits.
        high, scores, low = decode(predictor, coords, labels, box_batch, return_logits=True)
        masks = high > thr
        firsts, first_logits, warnings = [], [], [[] for _ in objects]
        for b, (obj, key) in enumerate(zip(objects, keys, strict=True)):
            rec[f"{key}/step1_scores"] = scores[b]
            if self.fine_tuned:
                w = obj.weights
                mixed = (mix_masks(torch.as_tensor(high[b]), w) > thr).numpy()
                first = mixed
                if not mixed.any():
                    first = masks[b, int(np.argmax(scores[b] * w[0]))]
                    warnings[b].append(
                        "the mixed step-1 mask is empty; the best-scoring step-1 mask gives the box"
                    )
                rec[f"{key}/step1_mixed_mask"] = mixed
                rec[f"{key}/step1_fallback"] = not mixed.any()
                rec[f"{key}/step1_box"] = mask_box(first)
                firsts.append(first)
                first_logits.append(mix_masks(low[b], w)[None])
            else:
                counts = masks[b].reshape(3, -1).sum(1).astype(np.int64)
                if not policy.large_pick:
                    large = 0
                elif official or not policy.true_largest:
                    # The scripts store the counts as uint8: the pick is the largest count mod 256.
                    large = int(np.argmax((counts % 256).astype(np.uint8)))
                else:
                    large = int(np.argmax(counts))
                rec[f"{key}/step1_mask_pixels"] = counts
                rec[f"{key}/step1_mask_pixels_uint8"] = (counts % 256).astype(np.uint8)
                rec[f"{key}/large_index"] = large
                firsts.append(masks[b, large])
                first_logits.append(low[b, large : large + 1])
        # Steps 2 and 3: the cascade (PerSAM-F's step 2 also takes the box of the mixed mask).
        refined = cascaded_refinement_batch(
            predictor,
            coords,
            labels,
            np.stack(firsts),
            np.stack(first_logits),
            steps=2,
            box_on_first=self.fine_tuned,
            keep_logits=True,
            on_empty="raise" if official or not policy.safe_empty else "no_box",
        )
        out = []
        for b, (key, result) in enumerate(zip(keys, refined, strict=True)):
            (_, best2), (final, best3) = result.steps
            rec[f"{key}/step2_scores"] = result.scores[0]
            rec[f"{key}/step2_best"] = best2
            rec[f"{key}/step2_box"] = result.boxes[1]
            rec[f"{key}/step3_scores"] = result.scores[1]
            rec[f"{key}/step3_best"] = best3
            rec[f"{key}/final_mask"] = final
            warnings[b] += result.warnings
            logits = result.high_res
            if not official and policy.safe_empty and not final.any():
                warnings[b].append("the final mask is empty: the object is lost in this frame")
                logits = None
            out.append((logits, prompts[b][0], warnings[b]))
        return out

    # -- the sequence ----------------------------------------------------------------------
    def run(
        self,
        objects: list[VideoObject],
        first_labels: np.ndarray,
        frames: Iterable[tuple[int, np.ndarray]],
    ) -> Iterator[FrameOutput]:
        """Segment `frames` ((index, RGB (H, W, 3)) for i = 1..T-1) -> one `FrameOutput` each."""
        if self.policy.official:
            yield from self._run_official(objects, first_labels, frames)
        else:
            yield from self._run_tracked(objects, first_labels, frames)

    def _run_official(self, objects, first_labels, frames):
        """The scripts' loop: slot j takes the j-th *surviving* label's mask as its box source,
        writes label j + 1, and the number of slots never grows again."""
        sources = [first_labels == o.id for o in objects]
        shape = first_labels.shape
        for index, image in frames:
            predictor = self.encoder.set_image(image)
            n = min(len(objects), len(sources))
            logits, points, warnings = [], {}, []
            for j in range(n):
                key = f"f{index:02d}/obj{j + 1}"
                try:
                    ((lg, coords, warn),) = self._segment_objects(
                        predictor, [objects[j]], [sources[j]], [key]
                    )
                except EmptyMaskError as exc:
                    raise EmptyMaskError(
                        f"frame {index}, object slot {j + 1}: {exc} (the official script crashes "
                        "here; video.mode=tracked handles it)"
                    ) from exc
                logits.append(lg)
                points[j + 1] = coords
                warnings += [f"frame {index} slot {j + 1}: {w}" for w in warn]
            label_map = merge_logits(logits, list(range(1, n + 1)), shape)
            sources = official_handover(label_map)
            if self.recorder is not None:
                self.recorder[f"f{index:02d}/label_map"] = label_map
                self.recorder[f"f{index:02d}/labels_present"] = np.array(
                    labels_of(label_map), dtype=np.uint8
                )
                self.recorder[f"f{index:02d}/num_obj_processed"] = n
            yield FrameOutput(index, label_map, points, warnings, image)

    def _run_tracked(self, objects, first_labels, frames):
        """Identity by object id; lost objects searched again from their location prior."""
        policy = self.policy
        sources: dict[int, np.ndarray | None] = {o.id: first_labels == o.id for o in objects}
        shape = first_labels.shape
        for index, image in frames:
            predictor = self.encoder.set_image(image)
            warnings: list[str] = []
            running = []  # (slot, object, box source or None, similarity map or None)
            for j, obj in enumerate(objects):
                source, sim = sources.get(obj.id), None
                if source is None or policy.absent_ratio > 0:
                    sim = location_prior.similarity_map(predictor, obj.feature)
                    peak = float(sim.max())
                    if source is None:
                        if not policy.refind_lost or peak < policy.refind_ratio * obj.ref_peak:
                            continue
                        warnings.append(f"frame {index}: object {obj.id} searched again")
                    elif peak < policy.absent_ratio * obj.ref_peak:
                        continue
                running.append((j, obj, source, sim))
            # Objects with a box source, and those searched again without one, each go through
            # the decoder together (`batch_objects`) or one by one.
            groups = [
                [r for r in running if r[2] is not None],
                [r for r in running if r[2] is None],
            ]
            if not policy.batch_objects:
                groups = [[r] for r in running]
            results = {}
            for group in groups:
                if not group:
                    continue
                keys = [f"f{index:02d}/obj{r[0] + 1}" for r in group]
                objs, srcs, sims = ([r[k] for r in group] for k in (1, 2, 3))
                outs = self._segment_objects(predictor, objs, srcs, keys, sims)
                for (j, obj, _, _), out in zip(group, outs, strict=True):
                    results[j] = (obj, *out)
            logits, ids, points = [], [], {}
            for j in sorted(results):
                obj, lg, coords, warn = results[j]
                warnings += [f"frame {index} object {obj.id}: {w}" for w in warn]
                if lg is None:
                    continue
                logits.append(lg)
                ids.append(obj.id)
                points[obj.id] = coords
            label_map = merge_logits(logits, ids, shape)
            if policy.keep_identity:
                sources = tracked_handover(label_map, [o.id for o in objects])
            else:  # the scripts' hand-over: the j-th surviving label's mask to object j
                masks = official_handover(label_map)
                sources = {
                    o.id: masks[j] if j < len(masks) else None for j, o in enumerate(objects)
                }
            if self.recorder is not None:
                self.recorder[f"f{index:02d}/label_map"] = label_map
                self.recorder[f"f{index:02d}/labels_present"] = np.array(
                    labels_of(label_map), dtype=np.uint8
                )
            yield FrameOutput(index, label_map, points, warnings, image)


class PerFrameSegmenter:
    """Video with a method that has no location prior to track with (GF-SAM,
    `method.video_per_frame`): each object of frame 0 is learned once
    (`learn_annotations(frame 0, its mask)`), and every later frame is segmented anew per object
    (`segment(frame, target)`), independently of the previous frames. The label map gives each
    pixel to the first object (in id order) whose mask covers it. An object not found in a frame
    is absent there (a warning when the method says so)."""

    recorder: dict | None = None

    def __init__(self, method, policy: VideoPolicy) -> None:
        self.method = method
        self.policy = policy

    def learn(self, image, label_map, logger=None, name: str = "") -> list[VideoObject]:
        ids = [i for i in labels_of(label_map) if i != 255]  # 255: DAVIS void, not an object
        if not ids:
            raise EmptyObjectError("the first frame's annotation has no object (all background)")
        objects = []
        for obj_id in ids:
            target = self.method.learn_annotations(image, label_map == obj_id)
            objects.append(
                VideoObject(
                    id=obj_id,
                    feature=torch.zeros(0),
                    ref_peak=float("nan"),
                    warnings=[f"object {obj_id}: {w}" for w in getattr(target, "warnings", [])],
                    target=target,
                )
            )
        return objects

    def run(self, objects, first_labels, frames) -> Iterator[FrameOutput]:
        for index, image in frames:
            label_map = np.zeros(first_labels.shape, np.uint8)
            points, warnings = {}, []
            for obj in objects:
                pred = self.method.segment(image, obj.target)
                label_map[pred.mask & (label_map == 0)] = obj.id
                points[obj.id] = np.asarray(pred.coords)[np.asarray(pred.labels) == 1]
                warnings += [f"frame {index} object {obj.id}: {w}" for w in pred.warnings]
            if self.recorder is not None:
                self.recorder[f"f{index:02d}/label_map"] = label_map
            yield FrameOutput(index, label_map, points, warnings, image)
