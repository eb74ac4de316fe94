"""Files a run writes into its Hydra run folder: masks, overlays, metrics.json, metrics.csv.

Every write goes to a temporary file renamed into place, and metrics.json is rewritten after
each object, so an interrupted or failing run keeps what it had already written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from persam.data.files import atomic_write

OBJECT_COLUMNS = ["object", "status", "iou", "biou", "acc", "n_images", "error"]


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Single-channel PNG, 0 background / 255 foreground, at the image's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255):
        raise OSError(f"could not write {path}")


def overlay(
    image: np.ndarray, mask: np.ndarray, coords: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """RGB image with the mask tinted blue and the points drawn (green +, red -)."""
    out = image.astype(np.float32)
    tint = np.array([30, 144, 255], dtype=np.float32)
    out[mask] = out[mask] * 0.4 + tint * 0.6
    out = out.astype(np.uint8)
    radius = max(4, round(0.012 * max(image.shape[:2])))
    for (x, y), label in zip(coords.tolist(), labels.tolist(), strict=True):
        color = (0, 220, 0) if label == 1 else (230, 0, 0)
        cv2.drawMarker(
            out, (int(x), int(y)), (255, 255, 255), cv2.MARKER_STAR, radius * 3, radius // 2 + 3
        )
        cv2.drawMarker(out, (int(x), int(y)), color, cv2.MARKER_STAR, radius * 3, radius // 2 + 1)
    return out


def write_overlay(path: Path, image: np.ndarray, mask, coords, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay(image, mask, coords, labels)
    if not cv2.imwrite(
        str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    ):
        raise OSError(f"could not write {path}")


def write_metrics(
    run_dir: Path,
    summary: dict,
    unit_key: str = "objects",
    columns: list[str] = OBJECT_COLUMNS,
    rows: tuple[str, list[dict]] | None = None,
) -> None:
    """`metrics.json` (the whole summary) and `metrics.csv` (one row per unit of `unit_key`).

    `columns` come first, in order (the first names the unit); any other scalar or list field
    of the entries follows, sorted. `rows` = (key, list of row dicts) replaces the per-unit rows
    (e.g. one per object of every video sequence), columns in their first row's order.
    """
    atomic_write(run_dir / "metrics.json", lambda f: json.dump(summary, f, indent=2, default=float))
    if rows is not None:
        fields = list(dict.fromkeys(k for row in rows[1] for k in row))

        def fine(f):
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows[1]:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
                )

        atomic_write(run_dir / "metrics.csv", fine)
        return
    entries = summary.get(unit_key, {})
    extra = sorted(
        {
            k
            for r in entries.values()
            for k, v in r.items()
            if k not in columns and k != "warnings" and not isinstance(v, dict)
        }
    )
    header = list(columns) + extra

    def rows(f):
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for name, result in entries.items():
            row = {header[0]: name, **result}
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )

    atomic_write(run_dir / "metrics.csv", rows)
