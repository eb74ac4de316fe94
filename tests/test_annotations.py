"""Reading PerSeg-layout files as users have them: mask formats, letter case, EXIF orientation.

Real PNG / JPEG files written with OpenCV and Pillow, read back through persam.data.perseg.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from persam.data.perseg import DataError, PerSegDataset, foreground, read_annotation, read_image

H, W = 40, 60


def disc(h: int = H, w: int = W) -> np.ndarray:
    """bool (h, w): a filled disc left of centre (so rotations and flips move it)."""
    yy, xx = np.mgrid[:h, :w]
    return (yy - h // 3) ** 2 + (xx - w // 4) ** 2 <= 8**2


def official(path: Path) -> np.ndarray:
    """The official code's reading: cv2 colour decode, BGR -> RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture()
def fg() -> np.ndarray:
    return disc()


def test_perseg_rgb_mask_is_read_as_the_official_code_reads_it(tmp_path, fg):
    path = tmp_path / "00.png"
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[fg] = (0, 0, 128)  # PerSeg's masks: red 128
    cv2.imwrite(str(path), bgr)
    notes: list[str] = []
    got = read_annotation(path, (H, W, 3), reference=True, warnings=notes)
    np.testing.assert_array_equal(got, official(path))  # unchanged: golden results kept
    assert notes == []


@pytest.mark.parametrize(
    "kind",
    ["gray8_255", "gray8_1", "gray16_255", "gray16_65535", "rgba", "green", "palette2", "ref01"],
)
def test_every_mask_format_gives_the_same_foreground(tmp_path, fg, kind):
    path = tmp_path / "00.png"
    if kind.startswith("gray8"):
        cv2.imwrite(str(path), fg.astype(np.uint8) * (255 if kind == "gray8_255" else 1))
    elif kind.startswith("gray16"):
        value = 255 if kind == "gray16_255" else 65535
        cv2.imwrite(str(path), fg.astype(np.uint16) * value)
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    elif kind == "rgba":  # opaque everywhere, colour only on the object
        bgra = np.zeros((H, W, 4), np.uint8)
        bgra[..., 3] = 255
        bgra[fg] = (0, 0, 200, 255)
        cv2.imwrite(str(path), bgra)
    elif kind == "green":  # an RGB mask drawn in green: red channel all zero
        bgr = np.zeros((H, W, 3), np.uint8)
        bgr[fg] = (0, 128, 0)
        cv2.imwrite(str(path), bgr)
    elif kind == "palette2":  # VOC / DAVIS palette: object index 2 is (0, 128, 0)
        im = Image.fromarray(fg.astype(np.uint8) * 2, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        im.save(path)
    elif kind == "ref01":  # a 0/1 RGB mask
        cv2.imwrite(str(path), np.repeat(fg[..., None], 3, -1).astype(np.uint8))
    notes: list[str] = []
    got = read_annotation(path, (H, W, 3), reference=True, warnings=notes)
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    np.testing.assert_array_equal(foreground(got), fg)
    # what PerSAM reads of the reference (red channel) is the object too
    np.testing.assert_array_equal(got[..., 0] > 0, fg)
    if kind in ("gray8_255", "gray16_65535", "rgba"):  # the official red reading agrees
        assert notes == []
    else:
        assert len(notes) == 1 and str(path) in notes[0] and "Re-save" in notes[0], notes


def test_empty_and_unreadable_masks_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match=r"empty\.png is empty.*data\.reference"):
        read_annotation(empty, (H, W, 3), reference=True)
    # a test image's empty mask is legitimate (object absent)
    assert not foreground(read_annotation(empty, (H, W, 3))).any()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        read_annotation(broken, (H, W, 3))


def test_upper_case_png_annotations_are_found(tmp_path):
    root = tmp_path / "data"
    (root / "Images" / "obj").mkdir(parents=True)
    (root / "Annotations" / "obj").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "Images" / "obj" / f"0{i}.JPG"), np.zeros((H, W, 3), np.uint8))
        cv2.imwrite(str(root / "Annotations" / "obj" / f"0{i}.PNG"), disc().astype(np.uint8) * 255)
    obj = PerSegDataset(root).object("obj")
    assert obj.annotations["00"].name == "00.PNG" and obj.annotations["01"].is_file()
    np.testing.assert_array_equal(foreground(obj.read_annotation("01", (H, W, 3))), disc())


def write_exif_jpeg(path: Path, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=100, exif=exif.tobytes())


@pytest.fixture()
def exif_object(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An object whose JPEGs carry EXIF orientation 6 (shown turned 90 degrees clockwise);
    its masks were drawn on the stored pixels, as the JPEG's own pixels are laid out."""
    root = tmp_path / "data"
    (root / "Images" / "obj").mkdir(parents=True)
    (root / "Annotations" / "obj").mkdir(parents=True)
    fg = disc()
    rgb = np.full((H, W, 3), 20, np.uint8)
    rgb[fg] = (250, 250, 250)
    for stem in ("00", "01"):
        write_exif_jpeg(root / "Images" / "obj" / f"{stem}.jpg", rgb, 6)
        cv2.imwrite(str(root / "Annotations" / "obj" / f"{stem}.png"), fg.astype(np.uint8) * 255)
    return root, rgb, fg


def test_exif_orientation_is_refused_by_default_naming_the_file(exif_object):
    root, _, _ = exif_object
    obj = PerSegDataset(root).object("obj")
    with pytest.raises(DataError) as err:
        obj.read_image("00")
    msg = str(err.value)
    assert str(root / "Images" / "obj" / "00.jpg") in msg
    assert "data.exif=apply" in msg and "data.exif=ignore" in msg


@pytest.mark.parametrize("mode", ["apply", "ignore"])
def test_exif_orientation_applies_to_images_and_masks_alike(exif_object, mode):
    root, rgb, fg = exif_object
    obj = PerSegDataset(root, exif=mode).object("obj")
    image = obj.read_image("01")
    mask = foreground(obj.read_annotation("01", image.shape))
    expected_fg = np.rot90(fg, k=-1) if mode == "apply" else fg
    assert image.shape[:2] == expected_fg.shape == mask.shape
    np.testing.assert_array_equal(mask, expected_fg)
    # the bright disc of the image sits under the mask (they stay aligned)
    assert image[mask].mean() > 200 and image[~mask].mean() < 60
    if mode == "apply":  # what a viewer shows: Pillow's own EXIF transpose
        from PIL import ImageOps

        with Image.open(obj.images["01"]) as im:
            shown = np.asarray(ImageOps.exif_transpose(im))
        assert np.abs(shown.astype(int) - image.astype(int)).max() <= 3


def test_exif_square_image_cannot_misalign_silently(tmp_path):
    """A square image is the dangerous case: sizes match whichever way it is read."""
    path = tmp_path / "sq.jpg"
    write_exif_jpeg(path, np.zeros((32, 32, 3), np.uint8), 8)
    with pytest.raises(DataError, match="sq.jpg has an EXIF orientation tag"):
        read_image(path)
    assert read_image(path, exif="ignore").shape == (32, 32, 3)
