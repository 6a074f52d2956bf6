"""The one image loader: every image a model sees (the API, ``eval``, ``heatmap``, the app, lmms-eval, fine-tuning)
goes through ``open_image``, so a photo gives the same pixels everywhere, and ``image_file_problem`` says before a
run why a file cannot be used.

- Files: an allow-list of formats (JPEG and MPO, PNG, WebP, BMP, GIF (first frame), TIFF), opened only as those.
- EXIF orientation is applied once (``PIL.ImageOps.exif_transpose``, which drops the tag, so applying it again is a
  no-op), also to PIL images passed in (one opened from a phone JPEG still carries its EXIF).
- A pixel limit, checked from the header before anything is decoded (a decompression bomb never decodes): Pillow's
  ``Image.MAX_IMAGE_PIXELS`` (about 89.5 M pixels) unless the environment variable ``VISFOCUS_MAX_IMAGE_PIXELS``
  gives another number. Pillow's own check (a warning above its limit, ``DecompressionBombError`` above twice it) is
  switched off while visfocus opens a file, so the user sees visfocus's message and the variable can raise the limit.
- Arrays: uint8 (H, W, 3) or (H, W, 4) (alpha dropped), float in [0, 1] (×255, rounded half up) or uint16 (scaled
  to 0–255, rounded); anything else is refused. 16-bit and float single-channel PIL images are scaled the same way.

No torch here: this module is imported by the parts of visfocus that never load a model.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from visfocus.errors import VisfocusError

ImageSource = Image.Image | str | os.PathLike | np.ndarray

PIXEL_LIMIT_ENV = "VISFOCUS_MAX_IMAGE_PIXELS"
# Pillow's format names, in the order Image.open tries them. MPO (how Pillow reads many phone JPEGs) has no opener
# of its own: Pillow's JPEG opener returns an MPO image when the file holds several pictures
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
ALLOWED_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
ACCEPTED_ARRAYS = ("a uint8 array (H, W, 3) or (H, W, 4) (alpha dropped), a float array of the same shapes with "
                   "values in [0, 1], or a uint16 array of the same shapes")
ACCEPTED_MODES = "8-bit pixels, 16-bit pixels, or float pixels in [0, 1]"
DRAFT_SIZE = (64, 64)  # JPEG checks decode at up to 1/8 scale: every byte is still entropy-decoded (truncation seen)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow's limit is one module global: it is switched off by one thread at a time, and always put back
_PILLOW_LIMIT_LOCK = threading.Lock()
_TRUNCATION_LOCK = threading.Lock()


class _Unusable(Exception):
    """Why a file cannot be used: ``kind`` (missing, unreadable, too large), the file, what is wrong with it
    (``detail``) and what to do about it (``advice``)."""

    LEADS = {"missing": "image file not found", "unreadable": "not a readable image file",
             "too large": "image too large"}

    def __init__(self, kind: str, path: Path, detail: str = "", advice: str = "check the path") -> None:
        super().__init__(kind)
        self.kind, self.path, self.detail, self.advice = kind, path, detail, advice

    @property
    def problem(self) -> str:
        """One line starting with the kind: ``missing: PATH``, ``unreadable: PATH (…)``, ``too large: PATH (…)``."""
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")

    def error(self) -> VisfocusError:
        detail = f" ({self.detail})" if self.detail else ""
        return VisfocusError(f"{self.LEADS[self.kind]}: {self.path}{detail}; {self.advice}")


# --- public functions ----------------------------------------------------------------------------------------------

def open_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image, upright (EXIF orientation applied), from a PIL image, a path or an array; one
    ``VisfocusError`` saying what is accepted otherwise. A PIL image passed in is never changed (a copy is returned).
    """
    if source is None:
        raise VisfocusError("a question needs an image, got None; give a PIL image, a path or an (H, W, 3) array")
    if isinstance(source, Image.Image):
        return _to_rgb(_upright(source))
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return _open_file(Path(source))
        except _Unusable as unusable:
            raise unusable.error() from None
    raise VisfocusError(f"unsupported image type {type(source).__name__}; give a PIL image, a path or an array")


def image_file_problem(path: str | os.PathLike) -> str | None:
    """Why the image file at ``path`` cannot be used, or None: missing, not an allowed format, over the pixel limit,
    or truncated/corrupt. Decodes the whole image (so a truncated JPEG or PNG counts), JPEGs at up to 1/8 scale (every
    byte still decoded, a fraction of the cost). One line that starts with its kind and the path:
    ``missing: PATH``, ``unreadable: PATH (why)`` or ``too large: PATH (W×H = N pixels, over the limit of L; …)``."""
    try:
        _check_file(Path(path))
    except _Unusable as unusable:
        return unusable.problem
    return None


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``VISFOCUS_MAX_IMAGE_PIXELS`` if set, else Pillow's ``Image.MAX_IMAGE_PIXELS``
    (None: no limit)."""
    with _PILLOW_LIMIT_LOCK:
        return _pixel_limit(Image.MAX_IMAGE_PIXELS)


# --- files ---------------------------------------------------------------------------------------------------------

def _pixel_limit(pillow_limit: int | None) -> int | None:
    """The limit from the environment variable, else ``pillow_limit``; one clear error for a bad value."""
    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return pillow_limit
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise VisfocusError(f"{PIXEL_LIMIT_ENV} must be a whole number of pixels ≥ 1 (e.g. 200000000), got {text!r}; "
                            f"fix or unset it")
    return value


@contextlib.contextmanager
def _pillow_check_off() -> Iterator[int | None]:
    """Pillow's own decompression-bomb check off (its global limit set to None) for the block; yields Pillow's limit.
    One thread at a time: the global is shared, and always restored."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header(path: Path) -> tuple[Image.Image, bool]:
    """The file opened (header read, nothing decoded) as an allowed format and within the pixel limit, and whether
    decoding it must also keep Pillow's check off (it is over Pillow's own limit, the user having raised ours)."""
    if not path.is_file():
        raise _Unusable("missing", path)
    with _pillow_check_off() as pillow_limit:
        limit = _pixel_limit(pillow_limit)
        try:
            img = Image.open(path, formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError:
            raise _Unusable("unreadable", path, _other_format(path), f"give a {ALLOWED_NAMES} image") from None
        except Exception as err:  # any plugin error on an untrusted header
            raise _Unusable("unreadable", path, f"cannot be opened: {_describe(err)}",
                            "check the file, or re-encode it") from None
    width, height = img.size
    if limit is not None and width * height > limit:
        img.close()
        raise _Unusable("too large", path, f"{width}×{height} = {width * height:,} pixels, over the limit of "
                        f"{limit:,}; {PIXEL_LIMIT_ENV} sets it", f"downscale it, or raise the limit with the "
                        f"environment variable {PIXEL_LIMIT_ENV} (e.g. {PIXEL_LIMIT_ENV}={width * height})")
    return img, pillow_limit is not None and width * height > pillow_limit


def _other_format(path: Path) -> str:
    """What the file is, for the message: another format Pillow knows, or not an image at all (called with Pillow's
    check off)."""
    with contextlib.suppress(Exception), Image.open(path) as img:
        return f"its format is {img.format}, not one of {ALLOWED_NAMES}"
    return f"not a {ALLOWED_NAMES} image"


@contextlib.contextmanager
def _truncation_refused() -> Iterator[None]:
    """Pillow refuses truncated data for the block, whatever its global says (lmms-eval sets
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` when imported). One thread at a time; always restored."""
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode(img: Image.Image, path: Path, *, pillow_off: bool, draft: bool) -> None:
    """Decode the whole (first frame of the) image; truncated or corrupt data is ``_Unusable``."""
    try:
        with _pillow_check_off() if pillow_off else contextlib.nullcontext(), _truncation_refused():
            if draft and img.format in ("JPEG", "MPO"):
                img.draft("RGB", DRAFT_SIZE)
            img.load()
    except Exception as err:  # any decoder error on untrusted data
        raise _Unusable("unreadable", path, f"truncated or corrupt: {_describe(err)}",
                        "re-download or re-encode it") from None


def _check_file(path: Path) -> None:
    img, pillow_off = _header(path)
    with img:
        _decode(img, path, pillow_off=pillow_off, draft=True)


def _open_file(path: Path) -> Image.Image:
    img, pillow_off = _header(path)
    with img:
        _decode(img, path, pillow_off=pillow_off, draft=False)
        if _orientation(img) in range(2, 9):
            ImageOps.exif_transpose(img, in_place=True)
        try:
            return _to_rgb(img)
        except VisfocusError as err:
            raise _Unusable("unreadable", path, str(err), "re-encode it as 8-bit") from None


def _describe(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())  # one line


# --- PIL images and arrays -----------------------------------------------------------------------------------------

def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # unreadable EXIF: leave the image as it is
        return 1


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a new image), or the image itself when it is upright."""
    return ImageOps.exif_transpose(image) if _orientation(image) in range(2, 9) else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image; 16-bit and float single-channel images scaled to 0–255 (Pillow's convert would clip them)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        grey = _as_uint8(np.asarray(image), f"a mode {image.mode} image", ACCEPTED_MODES)  # (H, W) uint8
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "I":
        raise VisfocusError(f"a 32-bit integer (mode I) image is not accepted; give {ACCEPTED_MODES}")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from (H, W, 3) or (H, W, 4) pixels (alpha dropped)."""
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape[:2]:
        raise VisfocusError(f"an image array of shape {array.shape} is not accepted; give {ACCEPTED_ARRAYS}")
    rgb = _as_uint8(array[..., :3], "an image array", ACCEPTED_ARRAYS)  # (H, W, 3) uint8
    return Image.fromarray(np.ascontiguousarray(rgb))


def _as_uint8(values: np.ndarray, what: str, accepted: str) -> np.ndarray:
    """``values`` (any shape) as uint8: uint8 as is, uint16 × 255/65535 and float × 255 (in [0, 1]), both rounded
    half up; other dtypes, and floats outside [0, 1] or not finite, are refused (``accepted``: what to give)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # exact integer rounding
    if np.issubdtype(values.dtype, np.floating):
        wide = values.astype(np.float64)
        if not np.isfinite(wide).all():
            raise VisfocusError(f"{what} of {values.dtype} holds values that are not finite (nan or inf); give "
                                f"{accepted}")
        low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise VisfocusError(f"{what} of {values.dtype} holds values in [{low:g}, {high:g}], outside [0, 1]; give "
                                f"{accepted}")
        return np.floor(wide * 255 + 0.5).astype(np.uint8)
    raise VisfocusError(f"{what} of dtype {values.dtype} is not accepted; give {accepted}")
