"""Request validation and execution shared by the gRPC and REST front ends (no protobuf in here).

Order of work for one request: resolve model and signature; check the input against the signature and
the limits (a gRPC tensor from its header alone, before any array is built); decode images on the
bounded decode pool; check the client is still there; run in chunks of at most --max-batch-size rows
through the dynamic batcher; concatenate.

Pixels: the `images` input must be finite and within 0..255 (raw RGB, as the evaluation pipeline feeds
the model). Anything else is refused, not clipped: values outside that range are almost always a
client that already normalised its images, and clipping would hide that behind confident answers.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from revnet.common.errors import UserError
from revnet.serving import layout
from revnet.serving.backends import Servable
from revnet.serving.request_images import DecodePool, decode_images_numpy
from revnet.serving.serve_config import ServeConfig
from revnet.serving.outcomes import name_some
from revnet.serving.tensors import DT_FLOAT, DT_STRING, InputSpec

log = logging.getLogger(__name__)

SIGNATURE_INPUTS = {"serving_default": "images", "predict_images": "image_bytes"}
IMAGES_DESCRIPTION = "float32 (DT_FLOAT) pixels 0..255"
BYTES_DESCRIPTION = "a string tensor (DT_STRING) of JPEG/PNG bytes, shape [batch]"
CheckAlive = Optional[Callable[[], None]]  # raises RequestAbandoned when the client is gone or late


class InferenceCore:
    def __init__(self, models, config: ServeConfig, batcher=None, metrics=None,
                 decode_pool: Optional[DecodePool] = None):
        """`models` is the ModelManager (or anything with its `get(name, version, label)`)."""
        self.models, self.config, self.batcher, self.metrics = models, config, batcher, metrics
        self.decode_pool = decode_pool

    def resolve_signature(self, signature: str, input_names: Sequence[str]) -> str:
        """The signature to run; "" picks it from the input name, as a convenience for clients."""
        if signature and signature not in SIGNATURE_INPUTS:
            raise UserError(f"signature {name_some([signature])} not found; expected one of {list(SIGNATURE_INPUTS)}",
                            not_found=True)
        if len(input_names) != 1:
            raise UserError("expected exactly one input ('images' float32 [batch,H,W,3] or 'image_bytes' string "
                            f"[batch]), got {name_some(input_names)}")
        name = input_names[0]
        if not signature:
            signature = {v: k for k, v in SIGNATURE_INPUTS.items()}.get(name, "serving_default")
        if SIGNATURE_INPUTS[signature] != name:
            raise UserError(f"signature {signature!r} takes input {SIGNATURE_INPUTS[signature]!r}, got "
                            f"{name_some([name])}")
        return signature

    def input_spec(self, servable: Servable, signature: str) -> InputSpec:
        rows = self.config.max_request_rows
        if signature == "serving_default":
            size = servable.input_size
            return InputSpec("images", DT_FLOAT, (None, size, size, 3), rows, IMAGES_DESCRIPTION)
        return InputSpec("image_bytes", DT_STRING, (None,), rows, BYTES_DESCRIPTION)

    def check_images(self, servable: Servable, images) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.float32:
            got = images.dtype if isinstance(images, np.ndarray) else "strings"
            raise UserError(f"input 'images' must be {IMAGES_DESCRIPTION}, got {got}")
        size = servable.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise UserError(f"input 'images' has shape {list(images.shape)}; expected [batch, {size}, {size}, 3]")
        self.check_rows(len(images))
        low, high = float(images.min()), float(images.max())  # NaN propagates into both
        if not (np.isfinite(low) and np.isfinite(high)):
            raise UserError("input 'images' has non-finite pixels (NaN or Inf); expected finite values 0..255")
        if low < 0.0 or high > 255.0:
            raise UserError(f"input 'images' has pixels outside 0..255 (min {low:g}, max {high:g}); expected raw RGB "
                            f"values 0..255 (the model normalises them itself)")
        return images

    def check_rows(self, rows: int) -> None:
        if rows == 0:
            raise UserError("the request is empty; expected at least one image")
        if rows > self.config.max_request_rows:
            raise UserError(f"a request of {rows} rows exceeds the server limit of {self.config.max_request_rows} "
                            f"(--max-request-rows)")

    def decode(self, servable: Servable, image_bytes, check_alive: CheckAlive = None) -> np.ndarray:
        if not isinstance(image_bytes, list):
            raise UserError(f"input 'image_bytes' must be {BYTES_DESCRIPTION}")
        self.check_rows(len(image_bytes))
        arguments = (image_bytes, servable.input_size, servable.preprocessing, self.config.max_image_pixels,
                     check_alive)
        return self.decode_pool.decode(*arguments) if self.decode_pool else decode_images_numpy(*arguments)

    def predict(self, model_name: str, version: Optional[int], signature: str, inputs: Dict,
                output_filter: Sequence[str] = (), check_alive: CheckAlive = None,
                label: Optional[str] = None) -> tuple:
        """(servable, {output: array}) for one request; UserError for anything the client got wrong.

        The model is named by `model_name` and `version` or `label` (neither: its highest served version).
        An input value may be a callable taking the InputSpec (a gRPC tensor not yet built), an array or
        a list of bytes.
        """
        servable = self.models.get(model_name, version, label)
        images = self.prepare(servable, signature, inputs, output_filter, check_alive)
        outputs = self.run(servable, images, check_alive)
        wanted = list(output_filter) or list(layout.OUTPUTS)
        return servable, {name: outputs[name] for name in wanted}

    def prepare(self, servable: Servable, signature: str, inputs: Dict, output_filter: Sequence[str] = (),
                check_alive: CheckAlive = None) -> np.ndarray:
        """A request's input as the model's float32 images, checked against the signature and the limits."""
        signature = self.resolve_signature(signature, list(inputs))
        unknown = [name for name in output_filter if name not in layout.OUTPUTS]
        if unknown:
            raise UserError(f"output_filter names unknown outputs {name_some(unknown)}; expected a subset of "
                            f"{list(layout.OUTPUTS)}")
        value = inputs[SIGNATURE_INPUTS[signature]]
        if callable(value):
            value = value(self.input_spec(servable, signature))
        if signature == "serving_default":
            return self.check_images(servable, value)
        return self.decode(servable, value, check_alive)

    def run(self, servable: Servable, images: np.ndarray, check_alive: CheckAlive = None) -> Dict[str, np.ndarray]:
        """Run in chunks of at most max_batch_size rows (all queued at once, so they batch and pipeline)."""
        step = self.config.max_batch_size
        chunks = [images[start:start + step] for start in range(0, len(images), step)]
        if check_alive:
            check_alive()  # between decode and inference: a late client's rows never reach the model
        if self.batcher:
            futures = [self.batcher.submit(servable, chunk, check_alive) for chunk in chunks]
            results = [future.result() for future in futures]
        else:
            results = []
            for chunk in chunks:
                if check_alive and results:
                    check_alive()
                results.append(self.run_direct(servable, chunk))
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([result[name] for result in results]) for name in results[0]}

    def run_direct(self, servable: Servable, images):
        outputs = servable.run(images)
        if self.metrics:
            self.metrics.record_batch(len(images))
        return outputs
