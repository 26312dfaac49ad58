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
import re
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from revnet.preprocess.image_limits import DEFAULT_MAX_IMAGE_PIXELS

JPEG_QUALITY = 95  # re-encoded images only; valid RGB JPEGs keep their original bytes
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_CONTAINERS = ("JPEG", "MPO")  # MPO: a camera's JPEG with a second (preview or stereo) frame
EXIF_ORIENTATION = 0x0112
# What a folder dataset reads (Pillow opens MPO through JPEG). Not every format Pillow knows: EPS, for
# one, is decoded by running Ghostscript on the file.
FOLDER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
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
               formats: Optional[Sequence[str]] = None, draft_side: Optional[int] = None) -> Image.Image:
    """The image with only its header read; ImageRejected when it is not an image, has no pixels or
    declares more than `max_pixels` (nothing has been decoded yet: Pillow decodes on load()). With
    `draft_side`, a JPEG is first set to decode at the reduced DCT scale keeping both sides >= it, and
    `max_pixels` bounds what will be decoded."""
    if not data:
        raise ImageRejected("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as error:  # over Pillow's own (higher) limit
        raise ImageTooLarge(f"image too large: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(f"cannot decode image ({sniff_format(data)}): {_without_addresses(error)}") from None
    if image.width < 1 or image.height < 1:
        raise ImageRejected("image has no pixels")
    image.declared_size = image.size  # a JPEG set to a reduced scale reports the reduced size
    if draft_side and image.format in JPEG_CONTAINERS:
        image.draft("RGB", (draft_side, draft_side))
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"image of {image.width}x{image.height} = {image.width * image.height:,} pixels exceeds "
                            f"the limit of {max_pixels:,} pixels")
    return image


def _without_addresses(error: Exception) -> str:
    """Pillow names the file object it read ("<_io.BytesIO object at 0x7f...>"): a reason must read the same
    on every run, so rejects.jsonl is the same bytes on every runner."""
    return re.sub(r" <[^<>]* object at 0x[0-9a-f]+>", "", str(error))


def _load(image: Image.Image, data: bytes) -> Image.Image:
    try:
        # load() decodes every pixel, so a truncated file fails here rather than in the trainer.
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(f"cannot decode image ({sniff_format(data)}): {error}") from None
    return image


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _wide_gray_to_8_bits(image: Image.Image) -> Image.Image:
    """Grayscale of more than 8 bits as 8-bit: 16-bit (I;16*) values / 257 (65535 -> 255); 32-bit integers
    (I) and floats (F) by their range: 0..1 floats * 255, up to 255 as they are, up to 65535 / 257, beyond
    that scaled by the maximum."""
    pixels = np.asarray(image, dtype=np.float64)
    top = float(pixels.max()) if pixels.size else 0.0
    if image.mode.startswith("I;16"):
        scale = 1 / 257
    elif image.mode == "F" and top <= 1.0:
        scale = 255.0
    else:
        scale = 1.0 if top <= 255 else 1 / 257 if top <= 65535 else 255 / top
    return Image.fromarray(np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image, orient: bool = False) -> Tuple[Image.Image, List[str]]:
    """A loaded image as RGB, and what was done: "cmyk", "grayscale", "16-bit", "alpha" (composited on white),
    "palette", "mode-X", "first-frame" (of an animation or a multi-page file), "exif-rotated" (`orient`)."""
    actions: List[str] = []
    if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":  # MPO: a JPEG with a preview frame
        actions.append("first-frame")
    if orient and image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
        image = ImageOps.exif_transpose(image)
        actions.append("exif-rotated")
    mode = image.mode
    if mode == "RGB":
        return image, actions
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, as a viewer shows them, rather than dropping alpha to black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), actions + ["alpha"]
    if mode.startswith("I") or mode == "F":
        return _wide_gray_to_8_bits(image).convert("RGB"), actions + ["16-bit"]
    action = {"CMYK": "cmyk", "L": "grayscale", "1": "grayscale", "P": "palette"}.get(mode, f"mode-{mode}")
    try:
        return image.convert("RGB"), actions + [action]
    except ValueError as error:
        raise ImageRejected(f"cannot convert a {mode} image to RGB: {error}") from None


def _reduce_to(image: Image.Image, min_side: int) -> Image.Image:
    """A non-JPEG image reduced by a whole factor (2, 4 or 8, box filter) keeping both sides >= `min_side`,
    as Pillow's reduced-scale JPEG decoding does for JPEGs."""
    for factor in (8, 4, 2):
        if min(image.size) // factor >= min_side:
            return image.reduce(factor)
    return image


def to_rgb_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, *, formats: Optional[Sequence[str]] = None,
                orient: bool = False, min_side: Optional[int] = None) -> EncodedImage:
    """Check an input file and return RGB JPEG bytes: the original if it is already a valid RGB JPEG,
    else a re-encoding. Raises ImageRejected if the file is not a decodable image or is over `max_pixels`.

    `formats` limits the containers Pillow may open; `orient` applies the EXIF orientation (TensorFlow's
    decoders ignore it); with `min_side`, an image whose sides are both at least twice `min_side` is
    stored reduced by 2, 4 or 8 keeping both sides >= `min_side` (a JPEG decoded at that DCT scale, which
    is then also what `max_pixels` bounds)."""
    image = _load(open_image(data, max_pixels, formats, draft_side=min_side), data)
    container, declared_size = image.format or sniff_format(data), image.declared_size
    if min_side is not None and container not in JPEG_CONTAINERS:
        image = _reduce_to(image, min_side)
    downscaled = image.size != declared_size
    rgb, actions = to_rgb(image, orient)
    if container in JPEG_CONTAINERS and not actions and not downscaled:
        return EncodedImage(data, "JPEG", image.height, image.width, "kept")
    if container not in JPEG_CONTAINERS:
        actions.insert(0, container.lower())
    if downscaled:
        actions.append("downscaled")
    return EncodedImage(_encode_jpeg(rgb), "JPEG", rgb.height, rgb.width, "+".join(actions))


def to_square_png(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, *,
                  formats: Optional[Sequence[str]] = None) -> Tuple[EncodedImage, np.ndarray]:
    """An input file as a lossless size x size RGB PNG (and its pixels), EXIF orientation applied: decoded and
    resized exactly as the model server does for "cifar" preprocessing (a JPEG at the reduced DCT scale that
    keeps DRAFT_MARGIN * size, then TensorFlow's bilinear resize), so a served photo meets these pixels."""
    image = _load(open_image(data, max_pixels, formats, draft_side=DRAFT_MARGIN * size), data)
    rgb, actions = to_rgb(image, orient=True)
    resized = resize_bilinear(_rgb_array(rgb), size, size)
    pixels = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return EncodedImage(encode_png(pixels), "PNG", size, size, "+".join(actions) or "kept"), pixels


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
    images are made with it, so a served photo becomes the pixels training saw): half-pixel centres, edge
    clamping, float output; with half_pixel_centers=False, TF1's resize_bilinear (output pixel i samples
    input position i * in/out)."""
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
