"""Image decoding "as in evaluation", twice: in the TF graph (the SavedModel's `predict_images`, which
calls the input pipeline's own evaluation preprocessing) and in numpy (the server, because ONNX cannot
hold DecodeJpeg and the hot path avoids TF), plus the server's bounded decode pool.

Evaluation preprocessing (`input_pipeline.eval_preprocess`, chosen by the model config's `preprocessing`):
decode to 3-channel RGB float; "cifar": bilinear resize to the square input when the size differs;
"imagenet": resize the shorter side to size*256/224, then centre-crop; "inception" (the original code's): the
central 87.5%, resized with TF1's bilinear (no half-pixel centres). The numpy path re-implements TF's bilinear
resize (both centre conventions, no antialiasing) so both paths agree.

The numpy path refuses an image whose header declares more than `max_image_pixels` before decoding it
(`preprocess.images.open_image`), and decodes a JPEG at least 4x larger (per side) than the size the
resize needs at a reduced DCT scale that keeps at least 2x that size: a slightly smoother result than
the TF path gives such an image (which decodes in full and resamples without antialiasing), at a
fraction of the memory. Pixels stay uint8 until the rows the resize needs are gathered.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Optional

import numpy as np

from revnet.common.errors import UserError
from revnet.preprocess.images import (DEFAULT_MAX_IMAGE_PIXELS, DRAFT_MARGIN, ImageRejected, ImageTooLarge,
                                     decode_rgb, resize_bilinear)
from revnet.preprocess.input_pipeline import INCEPTION_CENTRAL_FRACTION, imagenet_resize_target
from revnet.serving.outcomes import RequestAbandoned, ServerBusy

SERVED_FORMATS = ("JPEG", "PNG")
ABANDON_POLL_SECONDS = 0.05
_OBJECT_REPR = re.compile(r" <[^<>]* object at 0x[0-9a-f]+>")


def _evaluation_resize(pixels: np.ndarray, input_size: int, preprocessing: str) -> np.ndarray:
    height, width = pixels.shape[:2]
    if preprocessing == "inception":
        # tf.image.central_crop: the start offset is truncated, the crop keeps what is between the offsets.
        top = int((height - height * INCEPTION_CENTRAL_FRACTION) / 2)
        left = int((width - width * INCEPTION_CENTRAL_FRACTION) / 2)
        pixels = resize_bilinear(pixels[top:height - top, left:width - left], input_size, input_size,
                                  half_pixel_centers=False)
    elif preprocessing == "imagenet":
        resize_to = imagenet_resize_target(input_size)
        scale = np.float32(resize_to) / np.float32(min(height, width))
        new_h, new_w = int(np.round(np.float32(height) * scale)), int(np.round(np.float32(width) * scale))
        pixels = resize_bilinear(pixels, new_h, new_w)
        top, left = (new_h - input_size) // 2, (new_w - input_size) // 2
        pixels = pixels[max(top, 0):max(top, 0) + input_size, max(left, 0):max(left, 0) + input_size]
        if pixels.shape[:2] != (input_size, input_size):  # smaller than the crop: TF pads with zeros
            padded = np.zeros((input_size, input_size, 3), np.float32)
            off_h, off_w = (input_size - pixels.shape[0]) // 2, (input_size - pixels.shape[1]) // 2
            padded[off_h:off_h + pixels.shape[0], off_w:off_w + pixels.shape[1]] = pixels
            pixels = padded
    elif (height, width) != (input_size, input_size):
        pixels = resize_bilinear(pixels, input_size, input_size)
    return np.clip(pixels, 0.0, 255.0)


def _needed_side(input_size: int, preprocessing: str) -> int:
    """The shorter side the evaluation resize works from (the crop's source for "imagenet")."""
    return imagenet_resize_target(input_size) if preprocessing == "imagenet" else input_size


def decode_image_numpy(data: bytes, input_size: int, preprocessing: str,
                       max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """float32 [input_size, input_size, 3] in 0..255 from JPEG/PNG bytes, or a UserError."""
    if not data:
        raise UserError("image bytes are empty; expected a JPEG or PNG file")
    try:
        pixels = decode_rgb(bytes(data), max_pixels, min_side=DRAFT_MARGIN * _needed_side(input_size, preprocessing),
                            formats=SERVED_FORMATS)
    except ImageTooLarge as error:
        raise UserError(f"{error} (--max-image-pixels); expected a smaller JPEG or PNG") from None
    except ImageRejected as error:
        raise UserError(f"bytes are not a decodable JPEG or PNG image ({_OBJECT_REPR.sub('', str(error))})") from None
    return _evaluation_resize(pixels, input_size, preprocessing).astype(np.float32)


def decode_images_numpy(images, input_size: int, preprocessing: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                        check_alive: Optional[Callable[[], None]] = None) -> np.ndarray:
    """float32 [len(images), size, size, 3]; `check_alive()` runs before each image and may raise RequestAbandoned."""
    if not images:
        raise UserError("the request has no images; expected at least one")
    result = np.empty((len(images), input_size, input_size, 3), np.float32)
    for index, data in enumerate(images):
        if check_alive:
            check_alive()
        try:
            result[index] = decode_image_numpy(data, input_size, preprocessing, max_pixels)
        except UserError as error:
            raise UserError(f"image {index}: {error}" if len(images) > 1 else str(error)) from None
    return result


class DecodePool:
    """Decodes image requests on `workers` threads. At most `workers + queue` requests are in flight;
    one more is refused at once (ServerBusy). Work whose client is gone or late is dropped before it
    starts and between images, so a burst of abandoned requests costs no decoding."""

    def __init__(self, workers: int, queue: int):
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._lock = threading.Lock()
        self.in_flight = 0

    def _release(self, _future=None) -> None:
        with self._lock:
            self.in_flight -= 1

    def decode(self, images, input_size: int, preprocessing: str, max_pixels: int,
               check_alive: Optional[Callable[[], None]] = None) -> np.ndarray:
        with self._lock:
            if self.in_flight >= self.capacity:
                raise ServerBusy(f"the image decode queue is full ({self.capacity} requests decoding or waiting); "
                                 f"retry later")
            self.in_flight += 1
        try:
            future = self._executor.submit(decode_images_numpy, images, input_size, preprocessing, max_pixels,
                                           check_alive)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        while True:
            try:
                return future.result(timeout=ABANDON_POLL_SECONDS)
            except FutureTimeout:
                if check_alive:
                    try:
                        check_alive()
                    except RequestAbandoned:
                        future.cancel()  # still queued: never starts; running: stops at its next image
                        raise

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def decode_image_tf(data, input_size: int, preprocessing: str):
    """The TF graph version (one scalar string tensor): the input pipeline's evaluation preprocessing."""
    from revnet.preprocess.input_pipeline import decode_rgb, eval_preprocess

    return eval_preprocess(decode_rgb(data), preprocessing, input_size)
