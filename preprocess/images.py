"""Image decoding, checks and encoding for the preprocessing pipeline (Pillow only, no TensorFlow).

ImageNet is known to hold CMYK JPEGs, a PNG named `.JPEG` and grayscale images. They are recognised
from the file's bytes (never from a list of names) and re-encoded as RGB JPEG; a valid RGB JPEG is
kept byte for byte. Anything that does not fully decode is rejected with a reason.

Decompression bombs: `open_image` reads only the header (JPEG frame header, PNG IHDR) and refuses an
image over `max_pixels` before a single pixel is decoded. Preprocessing and the model server both go
through it; the server also decodes far-too-large JPEGs at a reduced DCT scale (`decode_rgb(min_side=)`).
"""
from __future__ import annotations

import io
import warnings
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

JPEG_QUALITY = 95  # re-encoded images only; valid RGB JPEGs keep their original bytes
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 40 megapixels (e.g. 7700x5200) is far above any ILSVRC2012 photo and still a bounded decode:
# about 160 MB of RGB while decoding. A 420 KB PNG can declare 12000x12000 (a 430 MB decode).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# An input file is read whole, so its size is bounded too: 256 MiB holds an uncompressed 40-megapixel image
# at 16 bits per channel (240 MB); a compressed photo is a small fraction of it.
DEFAULT_MAX_FILE_BYTES = 1 << 28
DRAFT_MARGIN = 2  # a JPEG is decoded at a reduced DCT scale that keeps >= 2x the size the resize needs
# Pillow warns from 89 MP; our own limit is checked first and is stricter, so its warning is noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageRejected(Exception):
    """The input cannot become a record; the message is the reason written to rejects.jsonl."""


class ImageTooLarge(ImageRejected):
    """The header declares more pixels than allowed; nothing was decoded."""


class EncodedImage(NamedTuple):
    encoded: bytes
    image_format: str  # "JPEG" or "PNG"
    height: int
    width: int
    action: str  # "kept", or what was converted: "cmyk", "grayscale", "png", ...


def sniff_format(data: bytes) -> str:
    """The container format from the leading bytes: "JPEG", "PNG" or "unknown"."""
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    return "unknown"


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               formats: Optional[Sequence[str]] = None) -> Image.Image:
    """The image with only its header read; ImageRejected when it is not an image, has no pixels or
    declares more than `max_pixels` (nothing has been decoded yet: Pillow decodes on load())."""
    if not data:
        raise ImageRejected("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as error:  # over Pillow's own (higher) limit
        raise ImageTooLarge(f"image too large: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(f"cannot decode image ({sniff_format(data)}): {error}") from None
    if image.width < 1 or image.height < 1:
        raise ImageRejected("image has no pixels")
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"image of {image.width}x{image.height} = {image.width * image.height:,} pixels exceeds "
                            f"the limit of {max_pixels:,} pixels")
    return image


def _load(image: Image.Image, data: bytes) -> Image.Image:
    try:
        # load() decodes every pixel, so a truncated file fails here rather than in the trainer.
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(f"cannot decode image ({sniff_format(data)}): {error}") from None
    return image


def _decode_fully(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    return _load(open_image(data, max_pixels), data)


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def to_rgb_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> EncodedImage:
    """Check an input file and return RGB JPEG bytes: the original if it is already a valid RGB JPEG,
    else a re-encoding. Raises ImageRejected if the file is not a decodable image or is over `max_pixels`."""
    image = _decode_fully(data, max_pixels)
    container = image.format or sniff_format(data)
    if container == "JPEG" and image.mode == "RGB":
        return EncodedImage(data, "JPEG", image.height, image.width, "kept")
    if image.mode == "CMYK":
        action = "cmyk"
    elif image.mode in ("L", "LA", "1", "I", "I;16", "F"):
        action = "grayscale"
    else:
        action = container.lower() if container != "JPEG" else f"mode-{image.mode}"
    if container != "JPEG" and action == "grayscale":
        action = f"{container.lower()}-grayscale"
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, as a viewer shows them, rather than dropping alpha to black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    elif image.mode in ("I", "I;16", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = pixels.max() or 1.0
        rgb = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return EncodedImage(_encode_jpeg(rgb), "JPEG", rgb.height, rgb.width, action)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 [H, W, 3] RGB array (decoding gives back exactly these pixels)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: Optional[int] = None,
               formats: Optional[Sequence[str]] = None) -> np.ndarray:
    """uint8 [H, W, 3] pixels of an encoded image, header-checked against `max_pixels` first.

    With `min_side`, a JPEG whose sides are both at least twice `min_side` is decoded at the smallest
    DCT scale (1/2, 1/4 or 1/8) that keeps both sides >= `min_side`: a fraction of the memory and time.
    """
    image = open_image(data, max_pixels, formats)
    if min_side and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (min_side, min_side))
    image = _load(image, data)
    if image.mode != "RGB":  # convert() copies even an RGB image
        image = image.convert("RGB")
    return _rgb_array(image)


def _rgb_array(image: Image.Image, band_bytes: int = 1 << 22) -> np.ndarray:
    """uint8 [H, W, 3] of an RGB image, copied out in bands of rows: np.asarray(image) goes through
    tobytes(), which holds two more full-size copies at once (10 bytes per pixel at peak instead of 7)."""
    pixels = np.empty((image.height, image.width, 3), np.uint8)
    rows = max(1, band_bytes // (3 * image.width))
    for top in range(0, image.height, rows):
        pixels[top:top + rows] = np.asarray(image.crop((0, top, image.width, min(top + rows, image.height))))
    return pixels


def resize_bilinear(image: np.ndarray, height: int, width: int, half_pixel_centers: bool = True) -> np.ndarray:
    """tf.image.resize(method="bilinear") in numpy (the model server's resize; a folder dataset's 32x32
    images are made with it, so a served photo becomes the pixels training saw): half-pixel centres, edge clamping, float output; with
    half_pixel_centers=False, TF1's resize_bilinear (output pixel i samples input position i * in/out)."""
    def axis(out_size, in_size):
        if half_pixel_centers:
            position = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
        else:
            position = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
        low = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (position - low).astype(np.float32)

    top, bottom, y_weight = axis(height, image.shape[0])
    left, right, x_weight = axis(width, image.shape[1])
    # Gather the needed rows first, then go to float: a uint8 input never exists in float at full size.
    upper, lower = image[top].astype(np.float32), image[bottom].astype(np.float32)
    rows = upper + (lower - upper) * y_weight[:, None, None]
    return rows[:, left] + (rows[:, right] - rows[:, left]) * x_weight[None, :, None]
