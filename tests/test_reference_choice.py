"""Which reference, and how good its mask: `data.reference=all`, `data.reference_perturbation`,
and PerSAM-F weights reuse (`method.scale_weights.load`)."""

from __future__ import annotations

import numpy as np
import pytest

from persam.data.perseg import DataError, PerSegDataset
from persam.data.perturb import EmptyPerturbedMask, perturb_annotation, perturb_mask


def _disc(h=60, w=80, cx=40, cy=30, r=10) -> np.ndarray:
    ys, xs = np.ogrid[:h, :w]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def test_perturbations_do_what_they_say():
    mask = _disc()
    size = np.sqrt(mask.sum())  # ~17.7 px; amount 0.2 -> radius 4
    eroded = perturb_mask(mask, "erode", 0.2)
    dilated = perturb_mask(mask, "dilate", 0.2)
    assert (eroded <= mask).all() and eroded.sum() < mask.sum()
    assert (dilated >= mask).all() and dilated.sum() > mask.sum()
    # a radius-4 disc takes 4-5 pixels off each side of the radius-10 disc's centre row
    assert round(0.2 * size) == 4 and 11 <= np.count_nonzero(eroded[30, :]) <= 13
    shifted = perturb_mask(mask, "shift", 0.5)  # box 21 x 21 -> 10 (rounded half) px
    ys, xs = np.nonzero(shifted)
    y0, x0 = np.nonzero(mask)
    assert (xs.min() - x0.min(), ys.min() - y0.min()) == (10, 10)
    assert shifted.sum() == mask.sum()
    box = perturb_mask(mask, "box", 0.0)
    assert box.sum() == 21 * 21 and (box >= mask).all()
    noisy = perturb_mask(mask, "noise", 0.2, seed="cat/00")
    changed = noisy ^ mask
    assert changed.any() and not changed[30, 40]  # the interior is kept
    np.testing.assert_array_equal(noisy, perturb_mask(mask, "noise", 0.2, seed="cat/00"))
    np.testing.assert_array_equal(perturb_mask(mask, "none", 0.9), mask)


def test_a_perturbation_that_empties_the_mask_names_the_object():
    ann = np.zeros((60, 80, 3), np.uint8)
    ann[_disc()] = (128, 0, 0)
    with pytest.raises(EmptyPerturbedMask, match="object 'cat'.*erode.*00 empty"):
        perturb_annotation(ann, "erode", 0.9, "cat", "00")
    out = perturb_annotation(ann, "dilate", 0.1, "cat", "00")
    assert out.shape == ann.shape and (out[..., 0] > 0).sum() > (ann[..., 0] > 0).sum()


def test_bad_perturbation_settings(tmp_path):
    from helpers import write_object

    write_object(tmp_path, "cat", n=2)
    with pytest.raises(ValueError, match="data.reference_perturbation must be one of"):
        PerSegDataset(tmp_path, reference_perturbation="blur")
    with pytest.raises(ValueError, match="data.perturbation_amount"):
        PerSegDataset(tmp_path, reference_perturbation="erode", perturbation_amount=2)


def test_reference_all_lists_annotated_images_and_refuses_one_image_objects(tmp_path):
    from helpers import write_object

    write_object(tmp_path, "cat", n=3)
    write_object(tmp_path, "lonely", n=1)
    (tmp_path / "Annotations" / "cat" / "02.png").unlink()  # not annotated: not a reference
    data = PerSegDataset(tmp_path, reference="all")
    cat = data.object("cat")
    assert cat.references == ["00", "01"]
    assert cat.with_reference("01").references == ["01"]
    assert cat.with_reference("01").reference_image.name == "01.jpg"
    with pytest.raises(DataError, match="object 'lonely' has 1 annotated image"):
        _ = data.object("lonely").references
