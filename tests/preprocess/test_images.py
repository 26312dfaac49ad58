"""Decoding, checks and conversions of single image files (Pillow only)."""
import io

import numpy as np
import pytest
from PIL import Image

from revnet.preprocess import images


def _rgb(height=20, width=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth(height=20, width=30):
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 8, yy * 12, np.full_like(xx, 128)], axis=-1).astype(np.uint8)


def _save(array_or_image, fmt, **kwargs):
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_valid_rgb_jpeg_is_kept_byte_for_byte():
    data = _save(_rgb(), "JPEG", quality=90)
    result = images.to_rgb_jpeg(data)
    assert result.encoded == data and result.action == "kept"
    assert (result.height, result.width, result.image_format) == (20, 30, "JPEG")


@pytest.mark.parametrize("kind, expected_action", [("cmyk", "cmyk"), ("png", "png"), ("gray", "grayscale"),
                                                   ("gray-png", "png-grayscale"), ("rgba-png", "png")])
def test_odd_inputs_are_detected_from_content_and_reencoded_as_rgb_jpeg(kind, expected_action):
    pixels = _smooth()
    data = {"cmyk": lambda: _save(Image.fromarray(pixels).convert("CMYK"), "JPEG"),
            "png": lambda: _save(pixels, "PNG"),
            "gray": lambda: _save(Image.fromarray(pixels).convert("L"), "JPEG"),
            "gray-png": lambda: _save(Image.fromarray(pixels).convert("L"), "PNG"),
            "rgba-png": lambda: _save(Image.fromarray(pixels).convert("RGBA"), "PNG")}[kind]()
    result = images.to_rgb_jpeg(data)
    assert result.action == expected_action
    assert images.sniff_format(result.encoded) == "JPEG"
    decoded = Image.open(io.BytesIO(result.encoded))
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (30, 20)
    if kind == "png":  # colours survive the conversion (up to JPEG loss)
        assert np.abs(np.asarray(decoded, np.int32) - pixels.astype(np.int32)).mean() < 8


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "cannot decode"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "cannot decode"),
])
def test_undecodable_inputs_are_rejected_with_a_reason(data, reason):
    with pytest.raises(images.ImageRejected, match=reason):
        images.to_rgb_jpeg(data)


def test_truncated_jpeg_is_rejected():
    data = _save(_rgb(64, 64), "JPEG", quality=95)
    with pytest.raises(images.ImageRejected, match="truncated"):
        images.to_rgb_jpeg(data[: len(data) // 2])


def test_png_encoding_is_lossless():
    pixels = _rgb(32, 32, seed=3)
    encoded = images.encode_png(pixels)
    assert images.sniff_format(encoded) == "PNG"
    np.testing.assert_array_equal(images.decode_rgb(encoded), pixels)
