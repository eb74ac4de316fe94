"""The synthetic splits on disk, in the PerSeg folder layout (generated once, then reused).

:func:`ensure_synthetic` writes ``root/<split>/Images/<obj>/NN.jpg`` and
``root/<split>/Annotations/<obj>/NN.png`` (PerSeg convention) plus a manifest, so the product
runs with no download; :func:`synthetic_dataset` serves a split as a ``PerSegDataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from persam.data.files import generated_folder
from persam.data.instances import write_instances
from persam.data.synthetic.identities import SPLITS, Identity, split_identities
from persam.data.synthetic.scene import Scene, render_scene

__all__ = ["GENERATOR_VERSION", "JPEG_QUALITY", "ensure_synthetic", "synthetic_dataset"]

#: Bump whenever the drawn pixels change for the same parameters (forces regeneration).
GENERATOR_VERSION = 1
JPEG_QUALITY = 95
_FG_BGR = (0, 0, 128)  # PerSeg annotation foreground, as written by cv2 (BGR)


def _params(split: str, seed: int, num_objects: int, images_per_object: int, copies=(1, 1)) -> dict:
    params = {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "seed": seed,
        "num_objects": num_objects,
        "images_per_object": images_per_object,
    }
    if tuple(copies) != (1, 1):
        params["instances_per_image"] = list(copies)
    return params


def copies_range(instances_per_image) -> tuple[int, int]:
    """`data.instances_per_image`: N, or [lo, hi] (drawn per test image) -> (lo, hi)."""
    value = instances_per_image
    if isinstance(value, str) and "-" in value:
        value = value.split("-", 1)
    if isinstance(value, int | str) and not isinstance(value, bool):
        value = [value, value]
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = 0
    if not 1 <= lo <= hi <= 20:
        raise ValueError(
            f"data.instances_per_image must be N or [lo, hi] with 1 <= lo <= hi <= 20 (e.g. "
            f"[1, 3]), got {instances_per_image!r}"
        )
    return lo, hi


def split_folder(root: Path, split: str, copies=(1, 1)) -> Path:
    """`root/<split>`, or `root/<split>_copies<lo>-<hi>` for a multi-instance world."""
    lo, hi = copies
    return root / split if (lo, hi) == (1, 1) else root / f"{split}_copies{lo}-{hi}"


def _object_name(index: int, identity: Identity) -> str:
    return f"obj{index:02d}_{identity.family}"


def _is_complete(split_dir: Path, params: dict) -> bool:
    try:
        manifest = json.loads((split_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    n = params["images_per_object"]
    objects = manifest.get("objects", [])
    if len(objects) != params["num_objects"]:
        return False
    for obj in objects:
        name = obj["name"]
        for k in range(n):
            if not (split_dir / "Images" / name / f"{k:02d}.jpg").is_file():
                return False
            if not (split_dir / "Annotations" / name / f"{k:02d}.png").is_file():
                return False
            multi = "instances_per_image" in params
            if multi and not (split_dir / "Instances" / name / f"{k:02d}.png").is_file():
                return False
    return True


def _write_split(
    out: Path,
    split: str,
    seed: int,
    identities: list[Identity],
    images_per_object: int,
    copies=(1, 1),
) -> list[dict]:
    objects = []
    for i, ident in enumerate(identities):
        name = _object_name(i, ident)
        img_dir, ann_dir = out / "Images" / name, out / "Annotations" / name
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for k in range(images_per_object):
            rng = np.random.default_rng([SPLITS[split], seed, i, k, GENERATOR_VERSION])
            n_copies = 1
            if k > 0 and tuple(copies) != (1, 1):  # the usual reference (00) shows one copy
                draw = np.random.default_rng([SPLITS[split], seed, i, k, GENERATOR_VERSION, 1])
                n_copies = int(draw.integers(copies[0], copies[1] + 1))
            scene = render_scene(ident, rng, distractor_pool=identities, copies=n_copies)
            image, mask = scene.image, scene.mask
            if tuple(copies) != (1, 1):
                write_instances(out / "Instances" / name / f"{k:02d}.png", scene.instances)
            ok = cv2.imwrite(
                str(img_dir / f"{k:02d}.jpg"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
            )
            ann = np.zeros(mask.shape + (3,), np.uint8)
            ann[mask] = _FG_BGR
            ok = ok and cv2.imwrite(str(ann_dir / f"{k:02d}.png"), ann)
            if not ok:
                raise OSError(f"cv2.imwrite failed in {out}")
        objects.append(
            {
                "name": name,
                "identity_seed": ident.seed,
                "family": ident.family,
                "texture": ident.texture,
                "palette": [list(c) for c in ident.palette],
            }
        )
    return objects


def ensure_synthetic(
    root: str | os.PathLike,
    split: str = "heldout",
    seed: int = 0,
    num_objects: int = 6,
    images_per_object: int = 4,
    train_objects: int = 32,
    instances_per_image=1,
) -> Path:
    """Generate the synthetic PerSeg-layout split under ``root`` unless already complete.

    Writes ``root/<split>/Images/<obj>/NN.jpg``, ``root/<split>/Annotations/<obj>/NN.png``
    (3-channel PNG, background (0,0,0), foreground BGR (0,0,128) i.e. red 128 as in PerSeg) and
    ``root/<split>/manifest.json`` (generator version, parameters, objects). Objects are named
    ``objNN_<family>``. The split is regenerated when the manifest is missing, its parameters or
    generator version differ, or a file is missing. Generation happens in a temporary folder
    under ``root`` that is renamed into place (under a file lock), so an interrupted or
    concurrent run never leaves a half-written split behind.

    Args:
        root: folder holding the splits.
        split: ``"heldout"`` (evaluation objects) or ``"train"``; their identity seeds come
            from disjoint ranges, so no identity is shared.
        seed: dataset seed.
        num_objects: number of objects of the ``heldout`` split.
        images_per_object: images (scenes) per object; ``00`` is the usual reference.
        train_objects: number of objects of the ``train`` split (used instead of
            ``num_objects`` when ``split == "train"``).
        instances_per_image: copies of the object per image (``N`` or ``[lo, hi]``, drawn per
            image; image ``00`` always shows one); other than 1, the split goes to
            ``root/<split>_copies<lo>-<hi>`` and ``Instances/<obj>/NN.png`` holds the indexed
            instance maps (0 background, 1..K the copies).

    Returns:
        The split folder ``root/<split>`` (``root/<split>_copies<lo>-<hi>``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    n_objects = train_objects if split == "train" else num_objects
    if n_objects < 1 or images_per_object < 1:
        raise ValueError("need at least one object and one image per object")
    copies = copies_range(instances_per_image)
    root = Path(root)
    split_dir = split_folder(root, split, copies)
    params = _params(split, seed, n_objects, images_per_object, copies)

    def write(tmp: Path) -> None:
        identities = split_identities(params["split"], seed, n_objects)
        objects = _write_split(tmp, params["split"], seed, identities, images_per_object, copies)
        manifest = {"params": params, "objects": objects}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))

    return generated_folder(split_dir, lambda d: _is_complete(d, params), write)


def synthetic_dataset(
    root: str | os.PathLike,
    split: str = "heldout",
    seed: int = 0,
    num_objects: int = 6,
    images_per_object: int = 4,
    reference: str = "00",
    objects: list[str] | None = None,
    instances_per_image=1,
    instances_root: str | None = None,
    reference_perturbation: str = "none",
    perturbation_amount: float = 0.1,
    shots: int = 1,
):
    """The synthetic split as a `PerSegDataset` (generated under `root` on first use).

    With `instances_per_image` other than 1 the ground-truth instances are the drawn copies
    (the split's `Instances/`) unless `instances_root` says otherwise.
    """
    from persam.data.perseg import PerSegDataset

    split_root = ensure_synthetic(
        root,
        split=split,
        seed=seed,
        num_objects=num_objects,
        images_per_object=images_per_object,
        instances_per_image=instances_per_image,
    )
    if instances_root is None and copies_range(instances_per_image) != (1, 1):
        instances_root = split_root / "Instances"
    return PerSegDataset(
        split_root,
        reference=reference,
        objects=objects,
        instances_root=instances_root,
        reference_perturbation=reference_perturbation,
        perturbation_amount=perturbation_amount,
        shots=shots,
    )


def example(index: int = 0, seed: int = 0) -> tuple[Scene, Scene]:
    """Two in-memory scenes of one held-out object (`persam.example()`): the reference and a
    test image, each with its `image` (H, W, 3) RGB uint8 and `mask` (H, W) bool. They are the
    scenes 00 and 01 of that object in `data=synthetic` (before JPEG compression)."""
    identities = split_identities("heldout", seed)
    ident = identities[index]
    return tuple(  # type: ignore[return-value]
        render_scene(
            ident,
            np.random.default_rng([SPLITS["heldout"], seed, index, k, GENERATOR_VERSION]),
            distractor_pool=identities,
        )
        for k in (0, 1)
    )
