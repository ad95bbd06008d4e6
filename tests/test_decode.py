"""The one decode function: every mode handled explicitly, bad files named, nothing clamped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.data.decode import decode_image, probe_image, resize_shorter_center_crop
from imgclf.errors import BadImageError


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_grayscale_stays_one_channel_and_rgb_has_three():
    gray = decode_image(encode(Image.new("L", (5, 4), 77)), "g.png")
    rgb = decode_image(encode(Image.new("RGB", (5, 4), (1, 2, 3))), "c.png")
    assert gray.shape == (4, 5, 1) and gray.dtype == np.uint8 and gray[0, 0, 0] == 77
    assert rgb.shape == (4, 5, 3) and tuple(rgb[0, 0]) == (1, 2, 3)


def test_channels_are_forced_on_request():
    assert decode_image(encode(Image.new("L", (3, 3), 9)), "g.png", channels=3).shape == (3, 3, 3)
    # ITU-R 601 luma: pure red is 76 in Pillow's L conversion
    assert decode_image(encode(Image.new("RGB", (3, 3), (255, 0, 0))), "r.png", channels=1)[0, 0, 0] == 76


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels = decode_image(encode(image, "JPEG", exif=exif.tobytes()), "phone.jpg")
    assert pixels.shape[:2] == (40, 20)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "XMP"])
def test_every_place_a_rotation_is_written_is_read_as_pillow_reads_it(fmt: str):
    """The check that skips asking Pillow for an orientation must see each way a file can carry one."""
    from PIL import ImageOps

    from imgclf.data.decode import may_be_rotated

    image = Image.new("RGB", (40, 20), (200, 10, 10))
    image.paste((10, 10, 200), (0, 0, 10, 20))  # a blue left edge: where it goes tells the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    if fmt == "XMP":
        xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
               b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
               b"</rdf:RDF></x:xmpmeta>")  # fmt: skip
        data = encode(image, "JPEG", xmp=xmp)
    else:
        data = encode(image, fmt, exif=exif.tobytes()) if fmt != "TIFF" else encode(image, fmt, tiffinfo={0x0112: 6})
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).astype(int)
    assert expected.shape[:2] == (40, 20)  # Pillow itself rotates it
    pixels = decode_image(data, f"rotated.{fmt.lower()}").astype(int)
    assert pixels.shape == expected.shape and np.abs(pixels - expected).max() <= 1
    assert not may_be_rotated(Image.open(io.BytesIO(encode(image, "JPEG"))))  # a plain file skips the question


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert decode_image(encode(rgba), "a.png")[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert decode_image(encode(palette, transparency=0), "p.png")[0, 0].tolist() == [255, 255, 255]
    gray_alpha = Image.new("LA", (2, 2), (0, 0))
    assert decode_image(encode(gray_alpha), "la.png")[0, 0, 0] == 255


def test_sixteen_bit_is_rescaled_never_clamped():
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    pixels = decode_image(encode(Image.fromarray(values)), "deep.png")
    assert pixels[0, :, 0].tolist() == [0, 4, 128, 255]


def test_cmyk_and_one_bit_images_decode():
    cmyk = decode_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), "cmyk.jpg")
    assert cmyk.shape == (4, 4, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60
    bilevel = decode_image(encode(Image.new("1", (4, 4), 1)), "bw.png")
    assert bilevel.shape == (4, 4, 1) and bilevel[0, 0, 0] == 255


def test_animated_gif_gives_first_frame():
    frames = [Image.new("L", (4, 4), value) for value in (10, 200)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, "anim.gif")[0, 0, 0] == 10


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>not found</body></html>", "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
    ],
)
def test_bad_files_are_named_with_a_reason(data: bytes, reason: str):
    with pytest.raises(BadImageError) as caught:
        decode_image(data, "photos/cat.jpg")
    assert "photos/cat.jpg" in str(caught.value) and reason in str(caught.value)


def test_truncated_file_is_an_error_not_a_crash():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(BadImageError, match="half.png"):
        decode_image(data[: len(data) // 2], "half.png")


def test_oversized_image_is_refused_from_its_header():
    data = encode(Image.new("L", (200, 100)))
    assert probe_image(data, "big.png").width == 200
    with pytest.raises(BadImageError, match="over the limit"):
        decode_image(data, "big.png", max_pixels=10_000)


def test_resize_shorter_side_then_center_crop():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 6:34] = 255  # white covers the centre square with a margin for bilinear blending
    out = resize_shorter_center_crop(pixels, 10)
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_a_long_strip_is_resized_from_its_middle_within_bounded_memory(monkeypatch):
    """Up to 25:1 an image is used; the part of the long side the centre crop never sees is cut
    before resizing, so a 40 x 1,000 image is never resized to 224 x 5,600."""
    from imgclf.data.decode import resize_shorter_center_crop

    sizes = []
    original = Image.Image.resize

    def recording_resize(image, size, *args, **kwargs):
        sizes.append(size)
        return original(image, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    pixels = np.zeros((40, 1000, 3), np.uint8)
    pixels[:, 490:510] = 255  # a bright band in the middle: half the width of the crop
    resized = resize_shorter_center_crop(pixels, 224)
    assert resized.shape == (224, 224, 3)
    assert max(width * height for width, height in sizes) <= 4 * 224 * 224  # not 224 x 5,600
    assert resized[:, 112].min() == 255 and resized[:, 0].max() == 0  # the middle is where it was


def test_a_strip_over_25_to_1_is_refused_from_its_header():
    from imgclf.data.decode import decode_image

    buffer = io.BytesIO()
    Image.new("L", (4_000_000, 1)).save(buffer, format="PNG", optimize=True)
    with pytest.raises(BadImageError, match="strip, not a picture"):
        decode_image(buffer.getvalue(), "strip.png")


def _phone_photo(width: int, height: int, orientation: int = 1) -> bytes:
    """A smooth colour photo-like JPEG (gradients and a disc), optionally with an EXIF rotation."""
    y, x = np.mgrid[0:height, 0:width]
    red = 255 * x / width
    green = 255 * y / height
    blue = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 4) ** 2, 220, 40)
    image = Image.fromarray(np.dstack([red, green, blue]).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_the_crop(orientation: int):
    data = _phone_photo(2400, 1800, orientation)
    full = decode_image(data, "phone.jpg")
    reduced = decode_image(data, "phone.jpg", min_side=256)
    assert min(reduced.shape[:2]) >= 256 and min(reduced.shape[:2]) < 2 * 256  # 1/4: 600x450
    assert (reduced.shape[0] > reduced.shape[1]) == (full.shape[0] > full.shape[1])  # EXIF rotation kept
    # What a model sees (the 224 px centre crop of the 256 px resize) is the same picture.
    expected = resize_shorter_center_crop(full, 224, 256).astype(np.int16)
    actual = resize_shorter_center_crop(reduced, 224, 256).astype(np.int16)
    assert np.abs(actual - expected).mean() < 2.0 and np.abs(actual - expected).max() < 40


def test_only_jpegs_large_enough_are_decoded_at_a_reduced_scale():
    small = _phone_photo(300, 200)
    assert decode_image(small, "small.jpg", min_side=256).shape[:2] == (200, 300)  # under 2x: full size
    png = encode(Image.new("RGB", (1200, 900), (5, 6, 7)))
    assert decode_image(png, "big.png", min_side=128).shape[:2] == (900, 1200)


def test_heic_photos_decode_with_pillow_heif_and_say_what_to_install_without_it(monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()  # to write the test file
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes
    data = encode(image, "HEIF", exif=exif.tobytes())
    pixels = decode_image(data, "IMG_0001.HEIC")
    assert pixels.shape == (40, 20, 3) and abs(int(pixels[20, 10, 0]) - 200) < 12
    from imgclf.data import decode

    monkeypatch.setattr(decode, "_register_plugins", lambda: False)
    assert "pip install pillow-heif" in decode._unidentified_reason(data)


def test_avif_images_decode():
    if "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow has no AVIF support")
    pixels = decode_image(encode(Image.new("RGB", (30, 20), (10, 200, 10)), "AVIF"), "a.avif")
    assert pixels.shape == (20, 30, 3) and abs(int(pixels[10, 15, 1]) - 200) < 12


FUZZ_SCRIPT = r"""
import io, random, sys
import numpy as np
from PIL import Image
from imgclf.data.decode import decode_image, probe_image
from imgclf.errors import BadImageError

pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
samples = {}
for name in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "GIF"):
    buffer = io.BytesIO()
    frames = [Image.fromarray(np.roll(pixels, shift, axis=1)) for shift in range(4)]
    try:
        frames[0].save(buffer, format=name, save_all=name in ("GIF", "WEBP", "TIFF"), append_images=frames[1:])
    except (KeyError, OSError):  # a Pillow built without this writer
        continue
    samples[name] = buffer.getvalue()
rng = random.Random(int(sys.argv[1]))
escaped = []
for name, data in samples.items():
    for _ in range(int(sys.argv[2])):
        mutated = bytearray(data)
        kind = rng.choice(("flip", "truncate", "zero", "insert"))
        if kind == "flip":
            for _ in range(rng.randint(1, 20)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        elif kind == "truncate":
            mutated = mutated[: rng.randrange(1, len(mutated))]
        elif kind == "zero":
            start = rng.randrange(len(mutated))
            mutated[start : start + 64] = bytes(len(mutated[start : start + 64]))
        else:
            at = rng.randrange(len(mutated))
            mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        for read in (probe_image, decode_image):
            try:
                read(bytes(mutated), "fuzzed." + name.lower())
            except BadImageError:
                pass
            except Exception as error:
                escaped.append(f"{name} {kind}: {type(error).__name__}: {error}")
print(len(samples), "formats")
print("\n".join(escaped[:10]) or "ok")
"""


def test_damaged_files_of_every_format_are_the_files_own_error(tmp_path):
    """Mutated copies (bytes flipped, zeroed, inserted, cut short) of a valid file in each allowed
    format: reading one raises the clear bad-image error naming it, or decodes; never another
    exception, a crash or a hang (each batch runs in a child process with a time limit)."""
    import subprocess
    import sys

    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ_SCRIPT)
    for seed in (0, 1):
        finished = subprocess.run([sys.executable, "-W", "ignore", str(script), str(seed), "40"], capture_output=True,
                                  text=True, timeout=300, check=False)  # fmt: skip
        assert finished.returncode == 0, finished.stderr[-2000:]
        formats, verdict = finished.stdout.strip().split("\n", 1)
        assert int(formats.split()[0]) >= 7 and verdict == "ok", verdict
