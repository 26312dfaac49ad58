"""Request validation and execution shared by the gRPC and REST front ends (no protobuf in here)."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np

from revnet.common.errors import UserError
from revnet.serving import layout
from revnet.serving.backends import ModelRepository, Servable
from revnet.serving.images import decode_images_numpy

log = logging.getLogger(__name__)

SIGNATURE_INPUTS = {"serving_default": "images", "predict_images": "image_bytes"}


class InferenceCore:
    def __init__(self, repository: ModelRepository, max_batch_size: int, batcher=None, metrics=None):
        self.repository, self.max_batch_size, self.batcher, self.metrics = repository, max_batch_size, batcher, metrics

    def resolve_signature(self, signature: str, input_names: Sequence[str]) -> str:
        """The signature to run; "" picks it from the input name, as a convenience for clients."""
        if signature and signature not in SIGNATURE_INPUTS:
            raise UserError(f"signature {signature!r} not found; expected one of {list(SIGNATURE_INPUTS)}", not_found=True)
        if len(input_names) != 1:
            raise UserError(f"expected exactly one input ('images' float32 [batch,H,W,3] or 'image_bytes' string [batch]), "
                            f"got {sorted(input_names) or 'none'}")
        name = input_names[0]
        if not signature:
            signature = {v: k for k, v in SIGNATURE_INPUTS.items()}.get(name, "serving_default")
        if SIGNATURE_INPUTS[signature] != name:
            raise UserError(f"signature {signature!r} takes input {SIGNATURE_INPUTS[signature]!r}, got {name!r}")
        return signature

    def check_images(self, servable: Servable, images) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.float32:
            got = images.dtype if isinstance(images, np.ndarray) else "strings"
            raise UserError(f"input 'images' must be float32 (DT_FLOAT) pixels 0..255, got {got}")
        size = servable.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise UserError(f"input 'images' has shape {list(images.shape)}; expected [batch, {size}, {size}, 3]")
        self.check_batch(len(images))
        return images

    def check_batch(self, rows: int) -> None:
        if rows == 0:
            raise UserError("the request is empty; expected at least one image")
        if rows > self.max_batch_size:
            raise UserError(f"batch of {rows} exceeds the server limit of {self.max_batch_size} (--max-batch-size)")

    def decode(self, servable: Servable, image_bytes) -> np.ndarray:
        if not isinstance(image_bytes, list):
            raise UserError("input 'image_bytes' must be a string tensor (DT_STRING) of JPEG/PNG bytes, shape [batch]")
        self.check_batch(len(image_bytes))
        return decode_images_numpy(image_bytes, servable.input_size, servable.preprocessing)

    def predict(self, model_name: str, version: Optional[int], signature: str, inputs: Dict,
                output_filter: Sequence[str] = ()) -> tuple:
        """(servable, {output: array}) for one request; UserError for anything the client got wrong."""
        servable = self.repository.get(model_name, version)
        signature = self.resolve_signature(signature, list(inputs))
        unknown = [name for name in output_filter if name not in layout.OUTPUTS]
        if unknown:
            raise UserError(f"output_filter names unknown outputs {unknown}; expected a subset of {list(layout.OUTPUTS)}")
        value = inputs[SIGNATURE_INPUTS[signature]]
        images = self.check_images(servable, value) if signature == "serving_default" else self.decode(servable, value)
        outputs = self.batcher.run(servable, images) if self.batcher else self.run_direct(servable, images)
        wanted = list(output_filter) or list(layout.OUTPUTS)
        return servable, {name: outputs[name] for name in wanted}

    def run_direct(self, servable: Servable, images):
        outputs = servable.run(images)
        if self.metrics:
            self.metrics.record_batch(len(images))
        return outputs
