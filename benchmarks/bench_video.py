"""Benchmark video segmentation: `persam.video` against the official scripts' loop.

For 1, 2 and 4 objects on one synthetic sequence (frames of `data=synthetic_video`, objects =
the first k of a fixed set of discs, placed so that with the embedded model no object vanishes
from the label maps: both loops then decode every object on every frame), same model, one run
each, it times

(a) the official loop (`persam_video.py` / `persam_video_f.py`): frame 0 encoded once per
    object, then per frame one encoding and, object by object, three decoder passes; PerSAM-F
    first fits each object's weights with 800 decoder passes + autograd dice/focal + AdamW;
(b) `persam.tasks.video.segmenter.VideoSegmenter` (tracked mode): frame 0 encoded once (embedding
    cache), the same three passes per object, PerSAM-F's fit by `fit_scale_weights` (one
    decoder pass, then the method's fit: Taylor backend, plain PyTorch loop; `--loop trainer`
    times the Lightning Trainer instead). As in a run, one `Encoder` serves every sequence: the
    hash of the encoder's weights in the cache key is computed once per process (in the
    warm-up); each round gets a new, empty cache folder, so every frame is encoded and stored.

and prints frames per second (whole sequence, frame 0's learning included), the ratio, the
ratio on frames 1..T-1 alone (`later`: what a long sequence tends to; PerSAM-F's fit is not in
it), the prompts SAM's mask decoder decoded on frames 1..T-1 by each loop (official/ours: the
same work when equal; tracked mode skips an object it finds absent where the official loop
keeps decoding it), and PerSAM-F's per-object fit time (the whole `fit_scale_weights` call) and
its ratio. The fused kernel is compiled before the timed runs (once per process; saved in the
compile cache). With `--rounds N` the two alternate N times and every figure is a median (fps
and `later` over rounds, fit times over rounds x objects): other processes share the machine.
`--arch vit_b` times SAM ViT-B's architecture with random weights (timing only: the masks are
meaningless).

    python benchmarks/bench_video.py                       # embedded model, PerSAM and PerSAM-F
    python benchmarks/bench_video.py --objects 4 --frames 4 --rounds 3
    python benchmarks/bench_video.py --arch vit_b --frames 6 --methods persam
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402

from persam.conf import CONFIG_DIR  # noqa: E402
from persam.data.synthetic_video import render_sequence  # noqa: E402
from persam.model import location_prior  # noqa: E402
from persam.model.cache import EmbeddingCache  # noqa: E402
from persam.model.encoder import Encoder  # noqa: E402
from persam.model.method import PerSAM, PerSAMF  # noqa: E402
from persam.model.refine import mask_box  # noqa: E402
from persam.model.scale_weights import fit_scale_weights, reference_loss  # noqa: E402
from persam.tasks.video.policy import VideoPolicy  # noqa: E402
from persam.tasks.video.segmenter import VideoSegmenter, merge_logits  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", choices=["embedded", "vit_b"], default="embedded")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--objects", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--methods", nargs="+", default=["persam", "persam_f"])
    p.add_argument("--fit-steps", type=int, default=800)
    p.add_argument("--rounds", type=int, default=1, help="alternating repeats (medians)")
    p.add_argument("--loop", choices=["plain", "trainer"], default="plain", help="our fit's loop")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def load_sam(arch: str):
    """The composed `backbone=<arch>` on CPU (ViT-B with random weights: timing only)."""
    overrides = [f"backbone={arch}", "backbone.device=cpu"]
    if arch != "embedded":
        overrides.append("backbone.checkpoint=null")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("video", overrides=overrides).backbone
    return instantiate(cfg)


def sequence(frames: int, objects: int):
    """Frames of the synthetic `three-spin` video and `objects` label masks (disc grid)."""
    _, images, _ = render_sequence(2, seed=0, num_frames=frames)
    h, w = images[0].shape[:2]
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for k in range(objects):
        cy, cx = h * (0.25 + 0.5 * (k // 2)), w * (0.2 + 0.6 * (k % 2))
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.12 * min(h, w)) ** 2] = k + 1
    return images, labels


class DecoderPrompts:
    """Counts the prompts SAM's mask decoder decodes (its batch size, summed over its calls)."""

    def __init__(self, sam) -> None:
        self.count = 0
        sam.mask_decoder.register_forward_pre_hook(self._add, with_kwargs=True)

    def _add(self, module, args, kwargs) -> None:
        self.count += kwargs["sparse_prompt_embeddings"].shape[0]


def official_loop(
    sam, images, labels, fine_tuned: bool, fit_steps: int, prompts: DecoderPrompts
) -> dict:
    """What the scripts do, with the stock predictor (timing baseline)."""
    predictor = SamPredictor(sam)
    ids = [int(v) for v in np.unique(labels) if v]
    topk = 1 if fine_tuned else 2
    feats, weights, fit_seconds = [], [], []
    t0 = time.perf_counter()
    for obj in ids:
        gt = labels == obj
        predictor.set_image(images[0])  # re-encoded once per object
        grid = location_prior.reference_mask_on_grid(predictor, location_prior.mask_image(gt, 215))
        cells = predictor.features.squeeze(0).permute(1, 2, 0)[grid]
        feat = location_prior.target_embedding(cells, "max_mean")
        feats.append(feat)
        if fine_tuned:
            tf = time.perf_counter()
            sim = location_prior.similarity_map(predictor, feat)
            pts, lbl = location_prior.select_points(sim, negative=False, topk=1)
            box = mask_box(gt, 10)
            pts = np.concatenate([pts, [[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]]])
            lbl = np.concatenate([lbl, [1]])
            w = torch.nn.Parameter(torch.full((2, 1), 1 / 3))
            opt = torch.optim.AdamW([w], lr=4e-4, eps=1e-4)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, fit_steps)
            target = torch.as_tensor(gt)
            for _ in range(fit_steps):  # the decoder reruns every epoch
                high, _, _ = predictor.predict(
                    point_coords=pts, point_labels=lbl, box=box[None], return_logits=True
                )
                loss = reference_loss(w, torch.as_tensor(high), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            mix = torch.cat((1 - w.detach().sum(0, keepdim=True), w.detach())).flatten().numpy()
            weights.append(mix)
            fit_seconds.append(time.perf_counter() - tf)
    sources = [labels == i for i in ids]
    start, t1 = prompts.count, time.perf_counter()
    for image in images[1:]:
        predictor.set_image(image)
        logits = []
        for j, feat in enumerate(feats):
            sim = location_prior.similarity_map(predictor, feat)
            pts, lbl = location_prior.select_points(sim, negative=False, topk=topk)
            box = mask_box(sources[j], 10)
            pts = np.concatenate([pts, [[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]]])
            lbl = np.concatenate([lbl, [1]])
            high, scores, low = predictor.predict(pts, lbl, box=box[None], return_logits=True)
            if fine_tuned:
                mixed = (high * weights[j][:, None, None]).sum(0)
                low_in = (low * weights[j][:, None, None]).sum(0)[None]
                masks, scores, low = predictor.predict(
                    pts, lbl, box=mask_box(mixed > 0)[None], mask_input=low_in
                )
            else:
                counts = (high > 0).reshape(3, -1).sum(1)
                pick = int(np.argmax((counts % 256).astype(np.uint8)))
                masks, scores, low = predictor.predict(pts, lbl, mask_input=low[pick : pick + 1])
            best = int(np.argmax(scores))
            high, scores, _ = predictor.predict(
                pts,
                lbl,
                box=mask_box(masks[best])[None],
                mask_input=low[best : best + 1],
                return_logits=True,
            )
            logits.append(high[int(np.argmax(scores))])
        label_map = merge_logits(logits, list(range(1, len(ids) + 1)), labels.shape)
        sources = [label_map == v for v in np.unique(label_map) if v]
        sources += [labels == 0] * (len(ids) - len(sources))  # keep the slot count (timing)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "later_seconds": t2 - t1,
        "fit_seconds": fit_seconds,
        "prompts": prompts.count - start,
    }


def ours(
    encoder: Encoder,
    images,
    labels,
    fine_tuned: bool,
    fit_steps: int,
    cache_dir: Path,
    prompts: DecoderPrompts,
    loop: str = "plain",
) -> dict:
    sam = encoder.sam
    encoder.cache = EmbeddingCache(cache_dir)  # empty: every frame is encoded and stored
    if fine_tuned:
        method = PerSAMF(sam, encoder, scale_weights={"loop": loop})
    else:
        method = PerSAM(sam, encoder)
    segmenter = VideoSegmenter(method, VideoPolicy(mode="tracked", fit_steps=fit_steps))
    t0 = time.perf_counter()
    objects = segmenter.learn(images[0], labels)
    start, t1 = prompts.count, time.perf_counter()
    frames = ((i, images[i]) for i in range(1, len(images)))
    for _ in segmenter.run(objects, labels, frames):
        pass
    t2 = time.perf_counter()
    fits = [o.fit.seconds for o in objects if o.fit is not None]
    return {
        "seconds": t2 - t0,
        "later_seconds": t2 - t1,
        "fit_seconds": fits,
        "prompts": prompts.count - start,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sam = load_sam(args.arch)
    print(f"arch={args.arch} frames={args.frames} threads={torch.get_num_threads()}")
    if args.arch != "embedded":
        print("(random weights: timing only)")
    print(f"fit loop={args.loop} rounds={args.rounds}")
    warm = sequence(3, 1)
    encoder = Encoder(sam)  # one per run, as `persam.video` builds it
    prompts = DecoderPrompts(sam)
    with tempfile.TemporaryDirectory() as tmp:
        ours(encoder, *warm, False, 5, Path(tmp), prompts)  # load / compile / fingerprint once
        if "persam_f" in args.methods:
            ours(encoder, *warm, True, 5, Path(tmp), prompts, args.loop)
            # Compile the direct pass too (a 5-step Taylor fit may not reach it): once per
            # process, not part of a fit's time (FitResult.compile_seconds).
            logits = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
            fit_scale_weights(logits, logits[0] > 0, steps=1, backend="fused")
    print(f"{'method':<9}{'objects':>8}{'official fps':>14}{'ours fps':>10}{'ratio':>8}"
          f"{'later':>7}{'prompts':>10}{'fit official s':>16}{'fit ours s':>12}"
          f"{'fit ratio':>10}")  # fmt: skip
    unequal = False
    for method in args.methods:
        fine = method == "persam_f"
        for k in args.objects:
            images, labels = sequence(args.frames, k)
            fps_b, fps_o, fit_b, fit_o, counts, later = [], [], [], [], set(), []
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory() as tmp:
                    b = official_loop(sam, images, labels, fine, args.fit_steps, prompts)
                    o = ours(
                        encoder, images, labels, fine, args.fit_steps, Path(tmp), prompts, args.loop
                    )
                fps_b.append(len(images) / b["seconds"])
                fps_o.append(len(images) / o["seconds"])
                fit_b += b["fit_seconds"]
                fit_o += o["fit_seconds"]
                later.append(b["later_seconds"] / o["later_seconds"])
                counts.add(f"{b['prompts']}/{o['prompts']}")
                unequal |= b["prompts"] != o["prompts"]
            fb, fo = np.median(fps_b), np.median(fps_o)
            line = f"{method:<9}{k:>8}{fb:>14.2f}{fo:>10.2f}{fo / fb:>8.2f}"
            line += f"{np.median(later):>7.2f}{','.join(sorted(counts)):>10}"
            if fine:
                fb, fo = np.median(fit_b), np.median(fit_o)
                line += f"{fb:>16.2f}{fo:>12.3f}{fb / fo:>10.1f}"
            print(line, flush=True)
    if unequal:
        print("prompts differ: the two loops did not do the same decoder work (see the docstring)")


if __name__ == "__main__":
    main()
