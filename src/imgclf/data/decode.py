"""The one image-decoding function imgclf uses everywhere (training, evaluation, prediction).

Every Pillow mode is handled explicitly, so no image is silently clamped or mis-coloured:

| mode                  | becomes                                                      |
| --------------------- | ------------------------------------------------------------ |
| 1, L                  | 8-bit grayscale                                              |
| LA, La, PA, RGBA, RGBa| composited over white (transparent pixels are background)   |
| P                     | RGB, or composited over white when it has transparency       |
| I;16*, I (16-bit)     | rescaled from 0..65535 to 0..255 (never clamped)             |
| I (32-bit), F         | rescaled from their own range to 0..255                      |
| CMYK, YCbCr, LAB, HSV | converted to RGB by Pillow                                   |

EXIF orientation is applied, animated images give their first frame, and only the raster
formats in ``ALLOWED_FORMATS`` are ever opened (so an EPS file never reaches Ghostscript).
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import BadImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageInfo",
    "convert_channels",
    "decode_image",
    "probe_image",
    "bound_aspect_ratio",
    "resize_shorter_center_crop",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "AVIF", "HEIF")
# HEIC/HEIF (what iPhones save) opens through the pillow-heif plugin when it is installed
# (``pip install imgclf[heif]``); AVIF through Pillow itself from 11.3 on.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
# 64 megapixels: a 8000x8000 photo passes, a decompression bomb is refused before allocation.
DEFAULT_MAX_PIXELS = 64_000_000
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WHITE = (255, 255, 255, 255)
# The centre crop keeps a square of the shorter side; beyond this ratio of long to short side the
# rest of the long side only costs memory (a 64,000,000 x 1 px PNG of 62 KB would be resized to
# 14 billion pixels), so it is cut first. Photos (at most about 3:1) never reach it.
MAX_ASPECT_RATIO = 4
# Beyond this the file is refused: no photo is 25 times longer than high (phone panoramas are about
# 4:1), while a 4,000,000 x 1 px PNG of 4 kB costs 4 megapixels of decoding per request.
MAX_SIDE_RATIO = 25


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says, read without decoding the pixels."""

    width: int
    height: int
    mode: str
    format: str
    exif_rotated: bool = False  # the EXIF orientation tag asks for a rotation or flip
    frames: int = 1
    transparency: bool = False  # a palette or grayscale image with a transparent colour

    @property
    def is_grayscale(self) -> bool:
        return self.mode in GRAYSCALE_MODES


# What a decoder raises on a damaged file. Beyond OSError and its kin, Pillow's plugins raise
# whatever their parsing meets: found by mutating valid files of every allowed format
# (tests/test_decode.py): a damaged AVIF raises RuntimeError, a truncated GIF IndexError, a TIFF
# without dimensions TypeError, others KeyError, struct.error, ZeroDivisionError. Each is the
# file's own error; MemoryError and the like are not caught.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError, IndexError, TypeError, KeyError,
                  AttributeError, ArithmeticError, struct.error)  # fmt: skip


def _described(error: Exception) -> str:
    text = str(error).strip()
    return text if isinstance(error, OSError | SyntaxError | ValueError) and text else f"{type(error).__name__}: {text}"


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    if len(data) == 0:
        raise BadImageError(source, "empty file (0 bytes)")
    _register_plugins()
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x its limit raises) for huge images; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise BadImageError(source, f"refused: {error}") from None
    except UnidentifiedImageError:
        raise BadImageError(source, _unidentified_reason(data)) from None
    except DECODER_ERRORS as error:
        raise BadImageError(source, f"unreadable image header ({_described(error)})") from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise BadImageError(
            source,
            f"image of {image.width}x{image.height} = {pixels:,} pixels is over the limit of "
            f"{max_pixels:,} pixels (refused before decoding)",
        )
    if pixels == 0:
        raise BadImageError(source, f"image has no pixels ({image.width}x{image.height})")
    if max(image.width, image.height) > MAX_SIDE_RATIO * min(image.width, image.height):
        raise BadImageError(
            source, f"image of {image.width}x{image.height} is a strip, not a picture (sides over "
            f"{MAX_SIDE_RATIO}:1; refused before decoding)"
        )  # fmt: skip
    return image


@functools.cache
def _register_plugins() -> bool:
    """Pillow's plugins (so ``formats=`` can name them) and pillow-heif's HEIF opener when it is
    installed; once per process. Returns whether HEIF files can be read."""
    Image.init()
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _unidentified_reason(data: bytes) -> str:
    """Why Pillow could not open ``data``, with what to install when it is a HEIC or AVIF photo."""
    brand = data[8:12] if data[4:8] == b"ftyp" else b""
    if brand in _HEIF_BRANDS and not _register_plugins():
        return "a HEIC/HEIF photo: reading it needs the pillow-heif package (pip install pillow-heif)"
    if brand in (b"avif", b"avis") and "AVIF" not in Image.OPEN:
        return "an AVIF image: reading it needs Pillow 11.3 or newer with AVIF support"
    return f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})"


def probe_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS, count_frames: bool = True) -> ImageInfo:
    """Read size, mode and format from the header; raises BadImageError naming ``source``.
    ``count_frames=False``: an animation's ``frames`` stay 1 (walking 100 frames of a GIF is about
    6 ms of the interpreter's time, which a server that only needs the size does not spend)."""
    image = _open(data, source, max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except DECODER_ERRORS:
        orientation = 1
    return ImageInfo(
        width=image.width,
        height=image.height,
        mode=image.mode,
        format=image.format,
        exif_rotated=orientation not in (1, None),
        frames=_frames(image) if count_frames else 1,
        transparency="transparency" in image.info,
    )


MAX_COUNTED_FRAMES = 100  # an animation's frames are counted up to here ("100+"): only the first is used


def _frames(image: Image.Image) -> int:
    """How many frames the file holds, counted up to ``MAX_COUNTED_FRAMES``: Pillow's ``n_frames``
    walks every frame (a 9.6 MB GIF of 440,000 frames took seconds), and a damaged frame
    table is the file's problem only if the first frame is damaged too."""
    if not getattr(image, "is_animated", False):
        return 1
    count = 1
    try:
        while count < MAX_COUNTED_FRAMES:
            image.seek(count)
            count += 1
    except EOFError:
        pass
    except DECODER_ERRORS:
        pass  # a damaged later frame: the first one is what is used
    finally:
        image.seek(0)
    return count


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 255]; every input value lands inside the range."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return _rescale_to_uint8(values, 0.0, 1.0)
        return _rescale_to_uint8(values, low, high)
    maximum = int(values.max())
    if image.mode.startswith("I;16") or 255 < maximum <= 65535:
        return _rescale_to_uint8(values, 0.0, 65535.0)
    if maximum <= 255 and int(values.min()) >= 0:
        return values.astype(np.uint8)  # an 8-bit image stored in a 32-bit container
    return _rescale_to_uint8(values, float(values.min()), float(maximum))


def _to_array(image: Image.Image) -> np.ndarray:
    """Pixels as uint8, HxWx1 for grayscale modes and HxWx3 for everything else."""
    mode = image.mode
    if mode == "1":
        gray = np.asarray(image.convert("L"))
    elif mode == "L":
        gray = np.asarray(image)
    elif mode in ("LA", "La"):
        gray = np.asarray(_composite_on_white(image).convert("L"))
    elif mode == "F" or mode == "I" or mode.startswith("I;16"):
        gray = _high_bit_depth_to_uint8(image)
    elif mode == "RGB":
        return np.asarray(image)
    elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(_composite_on_white(image))
    else:  # P without transparency, CMYK, YCbCr, LAB, HSV, RGBX
        return np.asarray(image.convert("RGB"))
    return gray[:, :, None]


def convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Turn an HxWx1 or HxWx3 uint8 array into ``channels`` (1 or 3) channels."""
    have = pixels.shape[2]
    if have == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    # ITU-R 601-2 luma, the same weights as Pillow's convert("L").
    gray = Image.fromarray(pixels).convert("L")
    return np.asarray(gray)[:, :, None]


def decode_image(
    data: bytes,
    source: str,
    channels: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> np.ndarray:
    """Decode encoded image bytes into a writable HxWxC uint8 array.

    ``source`` names the file in every error message. ``channels`` forces 1 (grayscale) or
    3 (RGB); ``None`` keeps 1 channel for grayscale modes and 3 for the rest. ``min_side``: the
    caller only needs both sides at least this long (it resizes to that); a JPEG larger than
    twice that is then decoded at 1/2, 1/4 or 1/8 of its size by the decoder itself (scaling in
    the DCT, which filters as it scales): a 12-megapixel phone photo decodes about 10x faster.
    """
    image = _open(data, source, max_pixels)
    try:
        if min_side is not None and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))  # keeps both sides >= min_side
        image.seek(0)  # animated GIF/WEBP/TIFF: the first frame
        if may_be_rotated(image):
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
        pixels = _to_array(image)
    except DECODER_ERRORS as error:
        raise BadImageError(source, f"cannot decode ({_described(error)})") from None
    if channels is not None:
        pixels = convert_channels(pixels, channels)
    return np.array(pixels, dtype=np.uint8, copy=True)


# Where Pillow's getexif() looks for an orientation: the EXIF block (JPEG, PNG, WebP, HEIF, AVIF),
# PNG's text copy of it, TIFF's own tags, and XMP.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def may_be_rotated(image: Image.Image) -> bool:
    """Whether the file carries metadata that can ask for a rotation. Most files carry none, and
    asking Pillow costs 10 us of the 110 us a 32 px JPEG takes to decode, in a loop between
    model calls."""
    return hasattr(image, "tag_v2") or any(key in image.info for key in _ORIENTATION_SOURCES)


def resize_shorter_center_crop(pixels: np.ndarray, size: int, resize_to: int | None = None) -> np.ndarray:
    """Scale so the shorter side is ``resize_to`` (default ``size``; bilinear, antialiased), then
    centre-crop a ``size`` square: ImageNet's "resize 256, crop 224" with ``resize_to=256``.
    """
    resize_to = max(size, resize_to or size)
    pixels = bound_aspect_ratio(pixels)
    height, width = pixels.shape[:2]
    if height == size and width == size and resize_to == size:
        return pixels
    # The long side is truncated, not rounded, as torchvision's Resize does (640x427 -> 383x256).
    if width <= height:
        new_width, new_height = resize_to, int(resize_to * height / width)
    else:
        new_width, new_height = int(resize_to * width / height), resize_to
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left = int(round((new_width - size) / 2.0))  # torchvision's CenterCrop offsets
    top = int(round((new_height - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    resized = np.asarray(image)
    return resized[:, :, None] if resized.ndim == 2 else resized


def bound_aspect_ratio(pixels: np.ndarray, max_ratio: int = MAX_ASPECT_RATIO) -> np.ndarray:
    """The centre of an image whose long side is over ``max_ratio`` times its short side, cut to
    that ratio; other images unchanged. The centre crop after resizing only ever
    uses the middle square, so the result differs at most in the last bits of the crop's filter."""
    height, width = pixels.shape[:2]
    if width > max_ratio * height:
        left = (width - max_ratio * height) // 2
        return np.ascontiguousarray(pixels[:, left : left + max_ratio * height])
    if height > max_ratio * width:
        top = (height - max_ratio * width) // 2
        return np.ascontiguousarray(pixels[top : top + max_ratio * width])
    return pixels
