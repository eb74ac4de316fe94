"""GF-SAM per episode: the project's `GFSAM` against a transcription of the official per-episode
loop (ANDYZAQ/GF-SAM, `matcher/GFSAM.py` as `main_eval.test()` drives it), side by side.

    python benchmarks/bench_gfsam.py                          # golden models and episodes
    python benchmarks/bench_gfsam.py --episodes 1shot/000,1shot/005 --rounds 3 --agreement all
    python benchmarks/bench_gfsam.py --device cuda --json out.json   # on a GPU, when one is lent

Both loops use the same two networks, built once in this process: the golden tiny SAM
(`sam.pth`, `build_sam(name="embedded", ...)`) and the golden tiny DINOv2 (`dinov2.pth`, timm),
and get the same inputs: the official loader's 1024 x 1024 images and masks of the golden
episodes (../shared/golden/gfsam, or $PERSAM_GOLDEN/gfsam). The project's method runs without
the embedding cache (every image encoded every time, as the official loop does), so the figures
compare the per-episode work, not caching.

The official loop is transcribed here as it executes per episode: `set_reference`,
`set_target`, `predict` (SAM's `set_image`, DINOv2 on the references and the query,
`generate_prior` twice, `find_points`, `predict_torch` per 64 points with SAM's own upscaling of
every mask to 1024 x 1024, the float 'nearest' resize of all masks, scipy's `connected_components`
(strong and weak), cluster classification with a float union and a resize per component, the
point-consistency loops over points x components, the per-point merge), and `clear`. Episodes
without a point end in the official `UnboundLocalError`; the bench then takes the all-zero
prediction the code had computed (as the golden harness did).

Rounds are interleaved (round r: every episode with one loop, then with the other, the order
alternating between rounds); the figures are medians over rounds of the per-episode mean, and the
ratio official / project (also per round: the two loops of a round ran back to back, under
nearly the same load). The mask agreement is the IoU of the two predictions on golden
episodes: by default the timed ones, the golden tests' default pair and all 9 edge episodes
(every branch: forced single point, no point, the empty-reference square, the fallback);
`--agreement all` takes all 33.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.sparse import csgraph
from segment_anything import SamPredictor
from segment_anything.utils.amg import batch_iterator

from persam.backbones.dinov2 import DINOv2Features, build_dinov2
from persam.backbones.sam import build_sam
from persam.model.encoder import Encoder
from persam.model.gf_sam import GFSAM

S = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def golden_dir() -> Path:
    root = os.environ.get("PERSAM_GOLDEN")
    if root:
        return Path(root) / "gfsam"
    return Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "gfsam"


# -- the official per-episode loop, transcribed ---------------------------------------------------


class OfficialGFSAM:
    """The official `GFSAM` object's per-episode behaviour (same arithmetic, same loops, same
    resizes), on a `SamPredictor` and a DINOv2 whose `x_prenorm` tokens come from
    `forward_prenorm` (timm's `forward_intermediates(norm=False)`: the official
    `forward_features(x)["x_prenorm"]`)."""

    def __init__(self, dinov2: torch.nn.Module, predictor: SamPredictor, device="cpu") -> None:
        self.encoder = dinov2
        self.predictor = predictor
        self.input_size = (S, S)
        self.encoder_img_size = 518
        self.encoder_feat_size = 518 // dinov2.patch_embed.patch_size[0]
        self.device = torch.device(device)

    def encoder_transform(self, img: torch.Tensor) -> torch.Tensor:
        # torchvision Resize(518) on a tensor (bilinear, antialias) and Normalize
        x = F.interpolate(
            img[None],
            (self.encoder_img_size, self.encoder_img_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        mean = torch.as_tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def forward_prenorm(self, x: torch.Tensor) -> torch.Tensor:
        (prenorm,) = self.encoder.forward_intermediates(
            x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
        )
        return prenorm  # the patch tokens: x_prenorm[:, 1:]

    def set_reference(self, imgs, masks):
        if masks.sum() == 0:
            _, _, sh, sw = masks.shape
            masks[..., (sh // 2 - 7) : (sh // 2 + 7), (sw // 2 - 7) : (sw // 2 + 7)] = 1
        self.ref_imgs = imgs.flatten(0, 1)
        self.ref_masks = masks.permute(1, 0, 2, 3)
        self.nshot = self.ref_masks.shape[0]

    def set_target(self, img):
        self.tar_img = img
        self.tar_img_np = img.mul(255).byte().squeeze(0).permute(1, 2, 0).cpu().numpy()

    def clear(self):
        self.tar_img = self.tar_img_np = self.ref_imgs = self.nshot = None

    def predict(self):
        self.predictor.set_image(self.tar_img_np)
        tar_feats = self.predictor.features
        ref_imgs = torch.cat([self.encoder_transform(r)[None] for r in self.ref_imgs], dim=0)
        tar_img = torch.cat([self.encoder_transform(t)[None] for t in self.tar_img], dim=0)
        ref_sem = F.normalize(self.forward_prenorm(ref_imgs.to(self.device)), dim=1, p=2)
        tar_sem = F.normalize(self.forward_prenorm(tar_img.to(self.device)), dim=1, p=2)

        neg_sim_map, neg_mean_sim_map = self.generate_prior(tar_sem, ref_sem, 1 - self.ref_masks)
        sim_map, mean_sim_map = self.generate_prior(tar_sem, ref_sem, self.ref_masks)
        half = (mean_sim_map.max() + mean_sim_map.min()) / 2
        cross = mean_sim_map * sim_map
        cross = (cross - cross.min()) / (cross.max() - cross.min() + 1e-6)
        neg_std = (neg_mean_sim_map - neg_mean_sim_map.min()) / (
            neg_mean_sim_map.max() - neg_mean_sim_map.min() + 1e-6
        )
        neg_region = neg_std > cross
        fil = cross * ~neg_region
        coord_xy, coord_labels, hot, coord_f = self.find_points(fil)
        masks_list = self.generate_sam_masks(tar_feats, coord_xy, coord_labels)
        if len(masks_list) == 0:
            tar_masks = torch.zeros((1, 1, 1024, 1024), device=self.device)
            pred_masks = tar_masks.squeeze(0)
            self.last_pred = pred_masks  # what the golden harness recovered from the frame
        else:
            tar_masks = torch.cat(masks_list, dim=0)
            n_weak, labels_weak, _, _ = self.mask_cluster(tar_masks, coord_f, hot)
            _, fgbg, _, cls_scores = self.cluster_classification(
                tar_masks,
                labels_weak,
                n_weak,
                mean_sim_map * mean_sim_map,
                neg_mean_sim_map * half,
            )
            selected_points = self.point_consistency_dis(
                tar_sem, tar_masks, labels_weak, n_weak, fgbg, coord_f
            )
            pred_masks, _ = self.triplet_selection_b(
                tar_masks, selected_points, mean_sim_map, cls_scores
            )
        # no point: selected_points is unbound here, the official UnboundLocalError
        return pred_masks, (coord_xy, selected_points)

    def triplet_selection_b(self, tar_masks, labels, mean_sim_map, cls_scores):
        pred = torch.zeros(self.input_size, device=self.device).unsqueeze(0)
        prob = torch.zeros(self.input_size, device=self.device).unsqueeze(0)
        sim = F.interpolate(
            mean_sim_map.unsqueeze(0), self.input_size, mode="bilinear", align_corners=False
        ).squeeze(0)
        for idx, label in enumerate(labels):
            if label == 1:
                pred += tar_masks[idx]
                cur = (sim * tar_masks[idx]).sum() / tar_masks[idx].sum() * tar_masks[idx]
                prob = torch.max(prob, cur)
        pred = (pred > 0).float()
        if pred.sum() == 0:
            cls_scores[labels != 2] = 0
            _, arg = cls_scores.max(dim=0)
            pred += tar_masks[arg]
            prob = (sim * tar_masks[arg]).sum() / tar_masks[arg].sum() * tar_masks[arg]
        return pred, prob

    def cluster_classification(self, tar_masks, labels, n_components, pos_map, neg_map):
        g = self.encoder_feat_size
        labels = torch.as_tensor(labels, device=self.device, dtype=torch.long)
        fgbg = torch.zeros_like(labels)
        com_labels = torch.zeros(n_components, device=self.device, dtype=torch.long)
        cls_scores = torch.zeros_like(labels, dtype=torch.float)
        pos_region = (pos_map > neg_map).float()
        for component in range(n_components):
            args = torch.where(labels == component)[0]
            union = (tar_masks[args].sum(dim=0) > 0).float()
            union = F.interpolate(union.unsqueeze(0), (g, g), mode="bilinear", align_corners=False)
            union = union.squeeze(0)
            pos = (pos_region * union).sum()
            neg = ((1 - pos_region) * union).sum()
            com_labels[component] = 1
            rsz = F.interpolate(
                tar_masks[args].float(), (g, g), mode="bilinear", align_corners=False
            )
            scores = (rsz * (pos_map - neg_map).unsqueeze(0)).sum(dim=(-1, -2, -3))
            scores = scores / (rsz.sum(dim=(-1, -2, -3)) + 1e-6)
            order = scores.argsort(descending=True)
            inner = torch.zeros_like(union, device=self.device, dtype=torch.float)
            for idx in order:
                cur = rsz[idx] * (1 - inner)
                pos = (pos_region * cur).sum()
                neg = ((1 - pos_region) * cur).sum()
                if pos > neg:
                    inner += cur
                    fgbg[args[idx]] = 1
            cls_scores[args] = pos - neg
        pseudo = (tar_masks[fgbg == 1].sum(dim=0) > 0).float()
        return com_labels, fgbg, pseudo, cls_scores

    def point_consistency_dis(self, tar_sem, tar_masks, labels, n_components, fgbg, coord_f):
        g = self.encoder_feat_size
        coord_f = torch.as_tensor(coord_f, device=self.device, dtype=torch.long)
        labels = torch.as_tensor(labels, device=self.device, dtype=torch.long)
        fgbg = torch.as_tensor(fgbg, device=self.device, dtype=torch.long)
        sims = []
        for component in range(n_components):
            args = torch.where(labels == component)[0]
            union = (tar_masks[args].sum(dim=0) > 0).float()
            union = F.interpolate(union.unsqueeze(0), (g, g), mode="bilinear", align_corners=False)
            union = union.squeeze(0)
            _, sim = self.generate_prior(tar_sem, tar_sem, union.unsqueeze(0))
            sims.append(sim)
        sims = torch.cat(sims, dim=0)
        coord_sims = sims[:, coord_f[:, 1], coord_f[:, 0]]
        dist = torch.cdist(coord_f.float(), coord_f.float())
        dist_labels = torch.zeros_like(coord_sims)
        for idx in range(coord_f.shape[0]):
            for compo in range(n_components):
                args = torch.where(labels == compo)[0]
                dist_labels[compo, idx] = dist[idx, args].min()
        dist_labels[dist_labels == 0] = 1
        coord_sims = coord_sims / dist_labels
        _, max_args = coord_sims.max(dim=0)
        sel = torch.where(max_args == labels, 1, 0)
        for component in range(n_components):
            args = torch.where(labels == component)[0]
            count = sel[args].sum()
            if count < len(args) - count:
                sel[args] = 0
        pos = (sel * fgbg) > 0
        waiting = ((sel + fgbg) > 0).long() * 2
        waiting[pos] = 1
        return waiting

    def mask_cluster(self, tar_masks, coord_f, hot):
        hot = torch.as_tensor(hot > 0, device=self.device, dtype=torch.float)
        rsz = F.interpolate(tar_masks.float(), (hot.shape[-2], hot.shape[-1]), mode="nearest")
        adjacent = (rsz.squeeze(1) * hot.unsqueeze(0)).flatten(1)
        coord_f = torch.as_tensor(coord_f, device=self.device, dtype=torch.long)
        adjacent = adjacent[:, coord_f[:, 1] * hot.shape[-1] + coord_f[:, 0]]
        a = adjacent.cpu().numpy()
        n_s, l_s = csgraph.connected_components(a, directed=True, connection="strong")
        n_w, l_w = csgraph.connected_components(a, directed=True, connection="weak")
        return n_w, l_w, n_s, l_s

    def find_points(self, sim_map):
        total = sim_map.sum()
        topk = min(int(total), 128)
        if topk == 0 and total > 0:
            topk = 1
        flat = sim_map.flatten(0)
        args = flat.topk(topk)[1]
        hot = torch.zeros_like(flat)
        hot[args] = 1
        hot = hot.view(1, sim_map.shape[1], sim_map.shape[2]).squeeze(0).cpu().numpy()
        points_f = np.argwhere(hot.T > 0)
        points = self.predictor.transform.apply_coords(points_f, sim_map.shape[-2:])
        return points, np.ones(points.shape[0], dtype=np.int32), hot, points_f

    def generate_sam_masks(self, tar_feats, coord_xy, coord_labels):
        out = []
        for (points,), (labels,) in zip(
            batch_iterator(64, coord_xy), batch_iterator(64, coord_labels), strict=True
        ):
            pts = torch.as_tensor(points, device=self.device, dtype=torch.int)
            lbl = torch.as_tensor(labels, device=self.device, dtype=torch.int)
            # The official predictor's `predict_torch` also takes `features=` (the query's
            # embedding, which `set_image` has just stored) and returns a fourth value;
            # segment_anything's reads the stored embedding itself.
            masks, _, _ = self.predictor.predict_torch(
                point_coords=pts[:, None, :],
                point_labels=lbl[:, None],
                multimask_output=False,
            )
            out.append(masks > self.predictor.model.mask_threshold)
        return out

    def generate_prior(self, query, supports, s_mask):
        bsize, n, _ = query.size()
        g = int(math.sqrt(n))
        sims = self.pixelwise(query, supports)
        maxes, means = [], []
        for st, _ in enumerate(supports):
            m = F.interpolate(
                s_mask[st].unsqueeze(0), size=(g, g), mode="bilinear", align_corners=True
            )
            m = m.flatten(2).transpose(-1, -2)
            sim = sims[st] * m
            means.append(sim.mean(1).view(bsize, 1, g, g) / (m.sum() / n + 1e-7))
            maxes.append(sim.max(1)[0].view(bsize, n).view(bsize, 1, g, g))
        return torch.cat(maxes, 1).mean(1), torch.cat(means, 1).mean(1)

    @staticmethod
    def pixelwise(query, supports):
        out = []
        for supp in supports:
            s = supp.unsqueeze(0).contiguous()
            q = query.contiguous().permute(0, 2, 1)
            q_norm = torch.norm(q, 2, 1, True)
            s_norm = torch.norm(s, 2, 2, True)
            out.append(torch.bmm(s, q) / (torch.bmm(s_norm, q_norm) + 1e-7))
        return out


# -- episodes ---------------------------------------------------------------------------------------


def load_episode(root: Path, run: str, n: str) -> dict:
    """The official loader's 1024 x 1024 inputs of a golden episode (edge episodes with their
    replaced masks)."""
    with np.load(root / "reference" / run / f"{n}.npz") as z:
        query_name = str(z["query_name"])
        support_names = [str(s) for s in z["support_names"]]

    def rgb(rel):
        img = Image.open(root / "data" / rel).convert("RGB")
        return np.asarray(img.resize((S, S), Image.BILINEAR))

    def mask(rel):
        m = np.asarray(Image.open(root / "data" / rel.replace(".jpg", ".png")).convert("L")) >= 128
        m = torch.as_tensor(m, dtype=torch.float)[None, None]
        return F.interpolate(m, (S, S), mode="nearest")[0, 0].numpy() > 0

    supports = [rgb(s) for s in support_names]
    masks = [mask(s) for s in support_names]
    if run == "edge":
        summary = json.loads((root / "reference" / "edge" / "summary.json").read_text())
        for k, spec in enumerate(summary["episodes_detail"][int(n)]["spec"]["supports"]):
            if spec["mask"] == "empty":
                masks[k] = np.zeros((S, S), bool)
            elif spec["mask"] == "square":
                r, c, h, w = spec["square"]
                masks[k] = np.zeros((S, S), bool)
                masks[k][r : r + h, c : c + w] = True
    return {"name": f"{run}/{n}", "query": rgb(query_name), "supports": supports, "masks": masks}


def to_batch(ep: dict, device) -> dict:
    """The official dataloader's tensors (batch size 1)."""

    def img(a):
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)

    return {
        "query_img": img(ep["query"])[None].to(device),
        "support_imgs": torch.stack([img(s) for s in ep["supports"]])[None].to(device),
        "support_masks": torch.stack([torch.as_tensor(m, dtype=torch.float) for m in ep["masks"]])[
            None
        ].to(device),
    }


def run_official(model: OfficialGFSAM, batch: dict) -> np.ndarray:
    # set_reference modifies the masks in place (the empty-reference square): a fresh copy each run
    model.set_reference(batch["support_imgs"], batch["support_masks"].clone())
    model.set_target(batch["query_img"])
    try:
        pred, _ = model.predict()
    except UnboundLocalError:  # the official crash on an episode without a point
        pred = model.last_pred
    model.clear()
    return pred[0].cpu().numpy() > 0


def run_ours(method: GFSAM, ep: dict) -> np.ndarray:
    target = method.learn_annotations(ep["supports"], ep["masks"])
    return method.segment(ep["query"], target).mask


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", type=Path, default=golden_dir())
    ap.add_argument(
        "--episodes", default="1shot/000,2shot/007", help="timed episodes, run/NNN comma-separated"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--agreement",
        default="fast",
        help="episodes for the mask agreement: fast (the timed ones, the golden tests' "
        "default set and every edge episode), all (all 33), none, or a list",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.golden
    device = args.device

    arch = json.loads((root / "sam.json").read_text())["architecture"]
    sam = build_sam(name="embedded", checkpoint=root / "sam.pth", device=device, **arch)
    dinov2 = build_dinov2("dinov2_golden", checkpoint=root / "dinov2.pth", device=device)
    ours = GFSAM(sam, Encoder(sam), features=DINOv2Features(dinov2, name="dinov2_golden"))
    official = OfficialGFSAM(dinov2, SamPredictor(sam), device=device)

    names = [e for e in args.episodes.split(",") if e]
    episodes = [load_episode(root, *e.split("/")) for e in names]
    batches = [to_batch(ep, device) for ep in episodes]
    loops = {
        "official": lambda i: run_official(official, batches[i]),
        "project": lambda i: run_ours(ours, episodes[i]),
    }
    with torch.no_grad():
        for name in loops:  # warm-up
            loops[name](0)
        times = {name: [] for name in loops}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            order = list(loops) if r % 2 == 0 else list(loops)[::-1]
            for name in order:
                sync(device)
                t0 = time.perf_counter()
                for i in range(len(episodes)):
                    loops[name](i)
                sync(device)
                times[name].append((time.perf_counter() - t0) / len(episodes))
        load_after = os.getloadavg()

        if args.agreement == "none":
            agree_names = []
        elif args.agreement == "fast":
            fast = ["1shot/000", "2shot/007"] + [f"edge/{i:03d}" for i in range(9)]
            agree_names = list(dict.fromkeys(names + fast))
        elif args.agreement == "all":
            agree_names = [
                f"{run}/{p.stem}"
                for run in ("1shot", "2shot", "edge")
                for p in sorted((root / "reference" / run).glob("*.npz"))
            ]
        else:
            agree_names = args.agreement.split(",")
        ious = {}
        for name in agree_names:
            ep = load_episode(root, *name.split("/"))
            a = run_official(official, to_batch(ep, device))
            b = run_ours(ours, ep)
            ious[name] = iou(a, b)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["official"] / med["project"]
    print(
        f"GF-SAM per episode, {len(episodes)} episodes x {args.rounds} interleaved rounds, "
        f"device {device}, torch threads {args.threads}"
    )
    print(f"  episodes: {', '.join(names)}")
    for k in loops:
        print(
            f"  {k:9s} median {med[k]:.3f} s/episode  (rounds: "
            + ", ".join(f"{t:.3f}" for t in times[k])
            + ")"
        )
    pairs = [o / p for o, p in zip(times["official"], times["project"], strict=True)]
    print(
        f"  ratio official/project: {ratio:.2f}x (of the medians); per round: "
        + ", ".join(f"{r:.2f}" for r in pairs)
        + f" (median {statistics.median(pairs):.2f}x)"
    )
    print(
        f"  load average (1, 5, 15 min): before {tuple(round(x, 2) for x in load_before)}, "
        f"after {tuple(round(x, 2) for x in load_after)}"
    )
    if ious:
        vals = np.array(list(ious.values()))
        low = {k: round(v, 4) for k, v in ious.items() if v < 0.99}
        print(
            f"  mask agreement (IoU project vs official) on {len(ious)} golden episodes: "
            f"min {vals.min():.4f}, mean {vals.mean():.4f}, {int((vals >= 0.99).sum())} >= 0.99"
            + (f"; below 0.99: {low}" if low else "")
        )
    result = {
        "episodes": names,
        "rounds": args.rounds,
        "device": device,
        "threads": args.threads,
        "seconds": times,
        "median": med,
        "ratio": ratio,
        "ratio_per_round": pairs,
        "load_before": load_before,
        "load_after": load_after,
        "mask_iou": ious,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
