"""The one image loader (``visfocus.images``): allowed formats, EXIF orientation, the pixel limit checked before any
decoding, array dtypes, and the pre-run file check that decodes the whole file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import visfocus as vf
from visfocus import api
from visfocus.errors import VisfocusError
from visfocus.images import ALLOWED_NAMES, PIXEL_LIMIT_ENV, image_file_problem, max_image_pixels, open_image
from visfocus.testing import make_image

BIG_SIDE = 14_000  # 196 M pixels: over Pillow's limit (≈ 89.5 M) and over twice it (Pillow's own error)


@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    """A 14000×14000 one-bit PNG of one colour: about 24 KB on disk, written in a fraction of a second."""
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.new("1", (BIG_SIDE, BIG_SIDE)).save(path)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode an image file fails the test (the header may still be read)."""
    def refuse(self):
        raise AssertionError(f"{self.format} image of size {self.size} was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)  # (H, W, 3) uint8


# --- files ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "bmp", "gif", "tif"])
def test_allowed_formats_load_as_rgb(ext, tmp_path):
    path = tmp_path / f"picture.{ext}"
    make_image(48, 32, seed=1).save(path)
    assert image_file_problem(path) is None
    loaded = open_image(path)
    assert loaded.mode == "RGB" and loaded.size == (48, 32)


def test_an_mpo_phone_jpeg_loads(tmp_path):
    path = tmp_path / "phone.jpg"
    make_image(48, 32, seed=1).save(path, format="MPO", save_all=True, append_images=[make_image(48, 32, seed=2)])
    with Image.open(path) as raw:
        assert raw.format == "MPO"
        first = _pixels(raw.convert("RGB"))
    assert image_file_problem(path) is None
    assert np.array_equal(_pixels(open_image(path)), first)


@pytest.mark.parametrize("ext", ["ico", "pcx", "tga"])
def test_a_format_outside_the_allow_list_is_refused(ext, tmp_path):
    path = tmp_path / f"picture.{ext}"
    make_image(32, 32, seed=1).save(path)
    problem = image_file_problem(path)
    assert problem == f"unreadable: {path} (its format is {ext.upper()}, not one of {ALLOWED_NAMES})"
    with pytest.raises(VisfocusError, match=f"its format is {ext.upper()}") as err:
        open_image(path)
    assert str(path) in str(err.value) and ALLOWED_NAMES in str(err.value) and "\n" not in str(err.value)


def test_missing_and_non_image_files(tmp_path):
    assert image_file_problem(tmp_path / "missing.png") == f"missing: {tmp_path / 'missing.png'}"
    with pytest.raises(VisfocusError, match="image file not found"):
        open_image(tmp_path / "missing.png")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    assert image_file_problem(text).startswith(f"unreadable: {text} (not a JPEG, PNG")
    with pytest.raises(VisfocusError, match="not a readable image file"):
        open_image(str(text))


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_a_truncated_file_is_reported_and_refused(ext, tmp_path):
    whole = tmp_path / f"whole.{ext}"
    make_image(224, 160, seed=1).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[:len(data) * 3 // 4])  # the header is intact: only decoding finds the cut
    assert image_file_problem(whole) is None
    with Image.open(cut):  # the header-only check the runner used to do passes
        pass
    problem = image_file_problem(cut)  # JPEG: decoded at 1/8 scale (draft), every byte still read
    assert problem is not None and problem.startswith(f"unreadable: {cut} (truncated or corrupt")
    with pytest.raises(VisfocusError, match="truncated or corrupt"):
        open_image(cut)


def test_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    red.save(path, save_all=True, append_images=[blue], duration=100)
    pixels = _pixels(open_image(path))  # (10, 20, 3)
    assert pixels.shape == (10, 20, 3) and (pixels == [255, 0, 0]).all()


def test_sixteen_bit_grey_files_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(path)  # (1, 3) → mode I;16
    assert _pixels(open_image(path))[0, :, 0].tolist() == [0, 100, 255]


# --- the pixel limit -----------------------------------------------------------------------------------------------

def test_an_image_over_the_pixel_limit_is_one_clear_error_before_decoding(big_png, monkeypatch, no_decoding):
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    limit = Image.MAX_IMAGE_PIXELS
    assert max_image_pixels() == limit and BIG_SIDE * BIG_SIDE > 2 * limit  # past Pillow's own error
    problem = image_file_problem(big_png)
    assert problem == (f"too large: {big_png} ({BIG_SIDE}×{BIG_SIDE} = {BIG_SIDE * BIG_SIDE:,} pixels, over the "
                       f"limit of {limit:,}; {PIXEL_LIMIT_ENV} sets it)")
    with pytest.raises(VisfocusError, match="image too large") as err:
        open_image(big_png)
    assert type(err.value) is VisfocusError and PIXEL_LIMIT_ENV in str(err.value) and f"{limit:,}" in str(err.value)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's limit is put back
    small = big_png.with_name("small.png")
    Image.new("1", (8, 8)).save(small)
    with pytest.raises(VisfocusError, match="was decoded"):  # the guard works: a file within the limit decodes
        open_image(small)


def test_the_environment_variable_raises_the_limit(big_png, monkeypatch):
    monkeypatch.setenv(PIXEL_LIMIT_ENV, str(BIG_SIDE * BIG_SIDE))
    assert max_image_pixels() == BIG_SIDE * BIG_SIDE
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert image_file_problem(big_png) is None  # decodes the 1-bit file (24 MB), no RGB copy of 196 M pixels


def test_the_environment_variable_lowers_the_limit(monkeypatch, tmp_path):
    monkeypatch.setenv(PIXEL_LIMIT_ENV, str(100 * 100))
    exact, over = tmp_path / "exact.png", tmp_path / "over.png"
    make_image(100, 100).save(exact)
    make_image(100, 101).save(over)
    assert open_image(exact).size == (100, 100)
    assert image_file_problem(over).startswith(f"too large: {over} (100×101 = 10,100 pixels")
    with pytest.raises(VisfocusError, match="over the limit of 10,000"):
        open_image(over)


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_a_bad_limit_value_is_one_clear_error(value, monkeypatch, tmp_path):
    monkeypatch.setenv(PIXEL_LIMIT_ENV, value)
    path = tmp_path / "small.png"
    make_image(8, 8).save(path)
    with pytest.raises(VisfocusError, match=PIXEL_LIMIT_ENV):
        open_image(path)


# --- EXIF orientation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_once_for_paths_and_pil_images(orientation, tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    make_image(64, 32, seed=1).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        expected = _pixels(ImageOps.exif_transpose(raw).convert("RGB"))  # (64, 32, 3): width and height swapped
    from_path = open_image(path)
    assert from_path.size == (32, 64) and np.array_equal(_pixels(from_path), expected)
    with Image.open(path) as opened:
        from_pil = open_image(opened)
        assert opened.size == (64, 32)  # the caller's image is not changed
    assert np.array_equal(_pixels(from_pil), expected)
    assert np.array_equal(_pixels(open_image(from_path)), expected)  # idempotent: the tag is gone


# --- arrays --------------------------------------------------------------------------------------------------------

def test_uint8_arrays_with_and_without_alpha():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)  # (H, W, 3)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)  # (H, W, 4)
    assert np.array_equal(_pixels(open_image(rgb)), rgb)
    assert np.array_equal(_pixels(open_image(rgba)), rgb)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_in_unit_range_are_scaled_and_rounded_half_up(dtype):
    values = np.array([0.0, 0.2, 0.5, 1.0], dtype=dtype)
    array = np.broadcast_to(values[None, :, None], (2, 4, 3))  # (H, W, 3), not contiguous
    assert _pixels(open_image(array))[0, :, 0].tolist() == [0, 51, 128, 255]


def test_uint16_arrays_are_scaled_to_8_bits():
    values = np.array([0, 257, 32768, 65535], dtype=np.uint16)
    array = np.broadcast_to(values[None, :, None], (2, 4, 4))  # (H, W, 4)
    assert _pixels(open_image(array))[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize(("array", "said"), [
    (np.full((4, 4, 3), 1.5), r"\[1\.5, 1\.5\], outside \[0, 1\]"),
    (np.full((4, 4, 3), np.nan, dtype=np.float32), "not finite"),
    (np.zeros((4, 4, 3), dtype=np.int64), "dtype int64"),
    (np.zeros((4, 4, 3), dtype=bool), "dtype bool"),
    (np.zeros((4, 4), dtype=np.uint8), r"shape \(4, 4\)"),
    (np.zeros((4, 4, 2), dtype=np.uint8), r"shape \(4, 4, 2\)"),
    (np.zeros((0, 4, 3), dtype=np.uint8), r"shape \(0, 4, 3\)"),
])
def test_other_arrays_are_refused_saying_what_is_accepted(array, said):
    with pytest.raises(VisfocusError, match=said) as err:
        open_image(array)
    assert "uint8 array (H, W, 3)" in str(err.value) and "[0, 1]" in str(err.value)


# --- the API's name for it -----------------------------------------------------------------------------------------

def test_load_image_is_the_one_loader(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(64, 32, seed=1).save(path, exif=exif)
    assert np.array_equal(_pixels(api.load_image(path)), _pixels(open_image(path)))
    assert vf.load_image(str(path)).size == (32, 64)
    with pytest.raises(VisfocusError, match="needs an image"):
        api.load_image(None)
    with pytest.raises(VisfocusError, match="unsupported image type"):
        open_image(3)


def test_a_truncated_file_is_refused_even_where_pillow_was_told_to_load_truncated_images(tmp_path, monkeypatch):
    """lmms-eval sets Pillow's ``LOAD_TRUNCATED_IMAGES`` when imported; the check must not depend on it."""
    from PIL import ImageFile

    whole = tmp_path / "whole.png"
    make_image(224, 160, seed=1).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert image_file_problem(cut).startswith(f"unreadable: {cut} (truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
