"""Image decoding, checks and encoding for the preprocessing pipeline (Pillow only, no TensorFlow).

ImageNet is known to hold CMYK JPEGs, a PNG named `.JPEG` and grayscale images. They are recognised
from the file's bytes (never from a list of names) and re-encoded as RGB JPEG; a valid RGB JPEG is
kept byte for byte. Anything that does not fully decode is rejected with a reason.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image

JPEG_QUALITY = 95  # re-encoded images only; valid RGB JPEGs keep their original bytes
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageRejected(Exception):
    """The input cannot become a record; the message is the reason written to rejects.jsonl."""


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


def _decode_fully(data: bytes) -> Image.Image:
    if not data:
        raise ImageRejected("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        # load() decodes every pixel, so a truncated file fails here rather than in the trainer.
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"image too large: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(f"cannot decode image ({sniff_format(data)}): {error}") from None
    if image.width < 1 or image.height < 1:
        raise ImageRejected("image has no pixels")
    return image


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def to_rgb_jpeg(data: bytes) -> EncodedImage:
    """Check an input file and return RGB JPEG bytes: the original if it is already a valid RGB JPEG,
    else a re-encoding. Raises ImageRejected if the file is not a decodable image."""
    image = _decode_fully(data)
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


def decode_rgb(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] pixels of an encoded image (used by tests and the benchmark's checks)."""
    return np.asarray(_decode_fully(data).convert("RGB"))
