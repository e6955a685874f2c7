import numpy as np
import pytest
from PIL import Image

from vice.data.image_io import UnreadableImageError, load_label_png, load_rgb, pil_to_rgb_uint8


def test_modes_convert_to_rgb_uint8():
    gray = Image.fromarray(np.array([[0, 128]], np.uint8))
    assert pil_to_rgb_uint8(gray).tolist() == [[[0, 0, 0], [128, 128, 128]]]
    deep = Image.fromarray(np.array([[0, 65535, 257 * 100]], np.uint16))
    assert pil_to_rgb_uint8(deep)[0, :, 0].tolist() == [0, 255, 100]
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0]]], np.uint8))
    assert pil_to_rgb_uint8(rgba).tolist() == [[[200, 100, 50], [0, 0, 0]]]
    f = Image.fromarray(np.array([[1.0, 3.0]], np.float32))
    assert pil_to_rgb_uint8(f)[0, :, 0].tolist() == [0, 255]
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    assert pil_to_rgb_uint8(cmyk).shape == (1, 2, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).shape == (4, 2, 3)


def test_corrupt_and_missing_files_raise_with_the_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(UnreadableImageError, match=r"bad\.jpg"):
        load_rgb(bad)
    with pytest.raises(UnreadableImageError, match=r"nothere\.png"):
        load_rgb(tmp_path / "nothere.png")


def test_label_png_keeps_raw_ids_and_refuses_rgb(tmp_path):
    path = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 181, 255]], np.uint8)).save(path)
    assert load_label_png(path).tolist() == [[0, 181, 255]]
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(UnreadableImageError, match="single-channel"):
        load_label_png(tmp_path / "rgb.png")
