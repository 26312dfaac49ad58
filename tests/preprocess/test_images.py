"""Decoding, checks and conversions of single image files (Pillow only)."""
import io

import numpy as np
import pytest
from PIL import Image

from revnet.preprocess import images
from revnet.preprocess.fake_data import FOLDER_KINDS, LOSSY_KINDS, folder_image_file, folder_pixels


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
                                                   ("gray-png", "png+grayscale"), ("rgba-png", "png+alpha")])
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


def test_a_pillow_reason_reads_the_same_on_every_run():
    """Pillow names the BytesIO it read ("<_io.BytesIO object at 0x7f...>"): rejects.jsonl would differ per run."""
    with pytest.raises(images.ImageRejected) as rejected:
        images.to_rgb_jpeg(b"not an image at all")
    assert str(rejected.value) == "cannot decode image (unknown): cannot identify image file"


@pytest.mark.parametrize("kind", sorted(FOLDER_KINDS))
def test_every_folder_format_and_mode_becomes_the_rgb_a_viewer_shows(kind):
    """Both storage paths: 32x32 PNG pixels exactly (lossy kinds within JPEG loss), and RGB JPEGs that
    decode to them; EXIF orientation applied, alpha on white, 16 bits scaled, the first frame of a GIF."""
    data, shown = folder_image_file(kind, folder_pixels(np.random.default_rng(4), 1, 32, 32))
    encoded, pixels = images.to_square_png(data, 32, formats=images.FOLDER_FORMATS)
    tolerance = 3.0 if kind in LOSSY_KINDS else 0.0
    assert np.abs(pixels.astype(float) - shown).mean() <= tolerance
    assert np.array_equal(images.decode_rgb(encoded.encoded), pixels)  # the PNG holds exactly these pixels
    as_jpeg = images.to_rgb_jpeg(data, formats=images.FOLDER_FORMATS, orient=True)
    assert images.sniff_format(as_jpeg.encoded) == "JPEG" and (as_jpeg.height, as_jpeg.width) == (32, 32)
    # JPEG loss on sharp palette edges is a few levels; a wrong rotation, frame or alpha is tens.
    assert np.abs(images.decode_rgb(as_jpeg.encoded).astype(float) - shown).mean() <= 8.0
    if kind == "jpeg":
        assert as_jpeg.encoded == data and as_jpeg.action == "kept"
    else:
        assert as_jpeg.action != "kept"


def test_the_conversions_are_named():
    rng = np.random.default_rng(0)
    names = {kind: images.to_rgb_jpeg(folder_image_file(kind, folder_pixels(rng, 0, 16, 16))[0], orient=True).action
             for kind in FOLDER_KINDS}
    assert names == {"jpeg": "kept", "png": "png", "bmp": "bmp", "gif": "gif+palette", "webp": "webp",
                     "tiff": "tiff", "exif-rotated": "exif-rotated", "cmyk": "cmyk", "gray16": "png+16-bit",
                     "rgb16": "png", "palette-alpha": "png+alpha", "animated-gif": "gif+first-frame+palette",
                     "grayscale": "png+grayscale"}


def test_sixteen_bit_grayscale_is_scaled_by_its_bit_depth_not_stretched():
    dark = np.full((8, 8), 1000, np.uint16)  # 1000 of 65535: a nearly black image
    pixels = images.decode_rgb(images.to_rgb_jpeg(_save(Image.fromarray(dark), "PNG")).encoded)
    assert abs(float(pixels.mean()) - 1000 / 257) < 2


def test_orientation_is_applied_only_when_asked():
    data, shown = folder_image_file("exif-rotated", folder_pixels(np.random.default_rng(1), 0, 24, 40))
    assert images.to_rgb_jpeg(data).action == "kept"  # ImageNet: the file as it is
    rotated = images.to_rgb_jpeg(data, orient=True)
    assert (rotated.height, rotated.width) == (24, 40) and rotated.action == "exif-rotated"
    assert np.abs(images.decode_rgb(rotated.encoded).astype(float) - shown).mean() < 3


def test_large_images_are_stored_reduced_keeping_twice_the_evaluation_side():
    rng = np.random.default_rng(2)
    photo = _save(Image.fromarray(folder_pixels(rng, 0, 2300, 3100)), "JPEG", quality=90)
    reduced = images.to_rgb_jpeg(photo, min_side=512)
    assert reduced.action == "downscaled" and (reduced.height, reduced.width) == (575, 775)  # 1/4: both >= 512
    png = _save(Image.fromarray(folder_pixels(rng, 0, 1100, 1500)), "PNG")
    assert (images.to_rgb_jpeg(png, min_side=512).height, images.to_rgb_jpeg(png, min_side=512).width) == (550, 750)
    small = _save(Image.fromarray(folder_pixels(rng, 0, 1000, 3000)), "JPEG", quality=90)
    assert images.to_rgb_jpeg(small, min_side=512).action == "kept"  # a side under 1024: nothing to gain
    # The pixel limit bounds what is decoded: a 48-megapixel JPEG is read at 1/8 scale, a PNG is refused.
    huge = _save(Image.new("RGB", (8000, 6000), (90, 120, 200)), "JPEG", quality=50)
    assert images.to_rgb_jpeg(huge, min_side=512).height == 750
    with pytest.raises(images.ImageTooLarge):
        images.to_rgb_jpeg(huge)


def test_only_the_folder_formats_are_opened():
    """EPS is decoded by running Ghostscript on the file: a folder dataset does not open it."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"
    with pytest.raises(images.ImageRejected, match="cannot identify image file"):
        images.to_rgb_jpeg(eps, formats=images.FOLDER_FORMATS)


def test_square_images_meet_the_model_servers_pixels():
    """A photo sent to the server ("cifar" preprocessing) becomes the pixels training saw, within rounding."""
    from revnet.serving.request_images import decode_image_numpy

    rng = np.random.default_rng(3)
    for height, width, image_format in ((300, 200, "JPEG"), (1000, 1500, "JPEG"), (77, 45, "PNG")):
        data = _save(Image.fromarray(folder_pixels(rng, 2, height, width)), image_format)
        _, pixels = images.to_square_png(data, 32)
        served = decode_image_numpy(data, 32, "cifar")
        assert np.abs(pixels - served).max() <= 0.5 + 1e-4, (height, width)
