"""The Open Inference Protocol (KServe v2, also spoken by Triton, Seldon MLServer and OpenVINO Model Server)
over the same models as TF Serving's API: the protocol's tensors, metadata and readiness, for REST
(serving/rest.py routes /v2/...) and gRPC (`inference.GRPCInferenceService`, registered beside
PredictionService).

A model has two inputs, of which a request carries exactly one: `images` (FP32 [batch, H, W, 3], raw
0..255 RGB) or `image_bytes` (BYTES [batch], JPEG/PNG). Its outputs are `probabilities` (FP32
[batch, classes]), `classes` (INT64 [batch]) and `logits` (FP32 [batch, classes]); a request may name the
ones it wants. Each input is checked against the model and the server's limits from its header (datatype,
shape, rows) before an array is built, and then exactly as a Predict input is.

The gRPC messages are tritonclient's generated classes (the protocol's reference client, whose
`inference` package is the KServe v2 proto with Triton's additions): one definition of the messages in
the process, shared with the clients that talk to this server.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from revnet.common.errors import UserError
from revnet.serving import layout
from revnet.serving.inference import SIGNATURE_INPUTS, InferenceCore
from revnet.serving.outcomes import name_one, name_some
from revnet.serving.tensors import DT_FLOAT, DT_INT64, DT_STRING, check_shape

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data"]
DATATYPES = {"FP32": DT_FLOAT, "BYTES": DT_STRING, "INT64": DT_INT64}
OUTPUT_DATATYPES = {"probabilities": "FP32", "classes": "INT64", "logits": "FP32"}
NUMPY = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
PLATFORMS = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel"}


def server_metadata() -> Dict:
    return {"name": "revnet", "version": importlib.metadata.version("revnet-pipeline"), "extensions": EXTENSIONS}


def parse_version(text) -> Optional[int]:
    """A v2 model_version ("" or absent: the highest served) as an int."""
    if text in ("", None):
        return None
    if not str(text).isdigit() or len(str(text)) > 18:
        raise UserError(f"model_version must be a positive integer, got {name_one(text)}")
    return int(text)


def _repository(core: InferenceCore, name: str):
    if not name:
        raise UserError(f"the request names no model; this server serves {name_some(core.models.names())}",
                        not_found=True)
    return core.models.repository(name)


def model_metadata(core: InferenceCore, name: str, version_text="") -> Dict:
    repository = _repository(core, name)
    version = parse_version(version_text)
    servable = repository.get(version)
    size, classes = servable.input_size, servable.num_classes
    shapes = {"probabilities": [-1, classes], "classes": [-1], "logits": [-1, classes]}
    return {"name": repository.name, "versions": [str(v) for v in ([version] if version else repository.versions())],
            "platform": PLATFORMS[repository.backend],
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, size, size, 3]},
                       {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": output, "datatype": OUTPUT_DATATYPES[output], "shape": shapes[output]}
                        for output in layout.OUTPUTS]}


def model_ready(core: InferenceCore, name: str, version_text="") -> bool:
    try:
        _repository(core, name).get(parse_version(version_text))
    except UserError:
        return False
    return True


def server_ready(core: InferenceCore) -> bool:
    return all(repository.versions() for repository in core.models.models.values())


def _flat_values(name: str, values, count: int, datatype: str):
    if not isinstance(values, (list, tuple)) and not hasattr(values, "__len__"):
        raise UserError(f"input {name!r} has no data")
    if datatype == "BYTES":
        flat = list(_flatten(values))
        if len(flat) != count:
            raise UserError(f"input {name!r} has {len(flat)} BYTES elements but its shape needs {count}")
        return [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat]
    try:
        array = np.asarray(values, dtype=NUMPY[datatype]).reshape(-1)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise UserError(f"input {name!r}: data must be numbers ({datatype})") from None
    if array.size != count:
        raise UserError(f"input {name!r} has {array.size} values but its shape needs {count}")
    return array


def _flatten(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        else:
            yield value


def _split_bytes(name: str, raw, count: int) -> List[bytes]:
    """BYTES elements from the protocol's binary form: each a 4-byte little-endian length, then the bytes."""
    view, items, offset = memoryview(raw), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise UserError(f"input {name!r}: BYTES data ends inside a length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise UserError(f"input {name!r}: a BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise UserError(f"input {name!r} has {len(items)} BYTES elements but its shape needs {count}")
    return items


def decode_input(name: str, datatype: str, shape: Sequence[int], raw, values, spec):
    """One v2 input as the model's input (float32 array or list of bytes), checked against `spec` first:
    `raw` is its binary content (or None), `values` its JSON or typed gRPC contents."""
    if datatype not in DATATYPES:
        raise UserError(f"input {name!r} has datatype {name_one(datatype)}; expected FP32 for 'images' or "
                        f"BYTES for 'image_bytes'")
    shape = tuple(int(size) for size in shape)
    if any(size < 0 for size in shape):
        raise UserError(f"input {name!r} has shape {list(shape)}; every dimension must be known")
    check_shape(DATATYPES[datatype], shape, spec, datatype)
    count = int(np.prod(shape, dtype=object))
    if raw is not None:
        if datatype == "BYTES":
            return _split_bytes(name, raw, count)
        if len(raw) != count * 4:
            raise UserError(f"input {name!r} holds {len(raw)} bytes, which does not match shape {list(shape)} of "
                            f"{datatype}")
        return np.frombuffer(raw, dtype=NUMPY["FP32"]).reshape(shape)
    flat = _flat_values(name, values, count, datatype)
    return flat if datatype == "BYTES" else flat.reshape(shape)


def infer(core: InferenceCore, name: str, version_text, inputs: Dict, requested: Sequence[str], check_alive=None):
    """(servable, {output: array}): `inputs` maps each input name to a callable taking its InputSpec."""
    _repository(core, name)
    unknown = [input_name for input_name in inputs if input_name not in SIGNATURE_INPUTS.values()]
    if unknown:
        raise UserError(f"unknown input {name_some(unknown)}; expected 'images' (FP32) or 'image_bytes' (BYTES)")
    return core.predict(name, parse_version(version_text), "", inputs, list(requested), check_alive=check_alive)


def output_arrays(outputs: Dict[str, np.ndarray]) -> List[Tuple[str, str, np.ndarray]]:
    """(name, datatype, little-endian array) per output, in the model's order."""
    return [(name, OUTPUT_DATATYPES[name], np.ascontiguousarray(value, dtype=NUMPY[OUTPUT_DATATYPES[name]]))
            for name, value in outputs.items()]


# --- REST (JSON, and the binary tensor data extension) ------------------------------------------------

BINARY_HEADER = "Inference-Header-Content-Length"


def rest_infer(core: InferenceCore, name: str, version_text, body: bytes, header_length: Optional[int],
               check_alive=None) -> Tuple[bytes, Optional[int]]:
    """The response body of a REST infer request, and its JSON header length when it carries binary outputs."""
    import json

    from revnet.serving.json_body import parse_json_bytes

    if header_length is not None and not 0 < header_length <= len(body):
        raise UserError(f"{BINARY_HEADER} {header_length} does not fit a body of {len(body)} bytes")
    header = body[:header_length] if header_length is not None else body
    request = parse_json_bytes(header)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise UserError("the body needs 'inputs': a list of {name, shape, datatype, data} tensors")
    binary, offset, inputs = memoryview(body)[len(header):], 0, {}
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise UserError("each input needs a 'name', 'shape', 'datatype' and 'data' (or binary_data_size)")
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not all(isinstance(size, int) for size in shape):
            raise UserError(f"input {name_one(tensor['name'])} needs 'shape': a list of integers")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise UserError(f"input {name_one(tensor['name'])}: binary_data_size {size!r} runs past the body")
            raw, offset = binary[offset:offset + size], offset + size
        if tensor["name"] in inputs:
            raise UserError(f"input {name_one(tensor['name'])} is given twice")
        inputs[tensor["name"]] = functools.partial(decode_input, tensor["name"], datatype, shape, raw,
                                                   tensor.get("data"))
    if offset != len(binary):
        raise UserError(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    wanted = request.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise UserError("'outputs' must be a list of {name, parameters}")
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    binary_outputs = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", binary_default)) for o in wanted}
    servable, outputs = infer(core, name, version_text, inputs, [o["name"] for o in wanted], check_alive)
    response = {"model_name": servable.name, "model_version": str(servable.version), "outputs": []}
    if "id" in request:
        response["id"] = str(request["id"])[:256]
    chunks = []
    for output, datatype, array in output_arrays(outputs):
        entry = {"name": output, "datatype": datatype, "shape": list(array.shape)}
        if binary_outputs.get(output, binary_default):
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        response["outputs"].append(entry)
    text = json.dumps(response, allow_nan=False).encode()
    return (text + b"".join(chunks), len(text)) if chunks else (text, None)


# --- gRPC (inference.GRPCInferenceService) ------------------------------------------------------------

def _typed_contents(tensor, datatype: str):
    contents = tensor.contents
    if datatype == "BYTES":
        return list(contents.bytes_contents)
    if datatype == "FP32":
        return contents.fp32_contents
    return contents.int64_contents


def make_grpc_service(core: InferenceCore, rpc, alive_check):
    """The GRPCInferenceService servicer; `rpc(api)` is the decorator that times, counts and maps errors,
    `alive_check(context)` the check that a request's client is still waiting."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
        def __init__(self):
            self.core = core

        @rpc("v2_live")
        def ServerLive(self, request, context):
            return service_pb2.ServerLiveResponse(live=True)

        @rpc("v2_ready")
        def ServerReady(self, request, context):
            return service_pb2.ServerReadyResponse(ready=server_ready(core))

        @rpc("v2_ready")
        def ModelReady(self, request, context):
            return service_pb2.ModelReadyResponse(ready=model_ready(core, request.name, request.version))

        @rpc("v2_metadata")
        def ServerMetadata(self, request, context):
            return service_pb2.ServerMetadataResponse(**server_metadata())

        @rpc("v2_metadata")
        def ModelMetadata(self, request, context):
            metadata = model_metadata(core, request.name, request.version)
            response = service_pb2.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                                         platform=metadata["platform"])
            for field in ("inputs", "outputs"):
                for tensor in metadata[field]:
                    getattr(response, field).add(**tensor)
            return response

        @rpc("v2_infer")
        def ModelInfer(self, request, context):
            raw = list(request.raw_input_contents)
            if raw and len(raw) != len(request.inputs):
                raise UserError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
            inputs = {}
            for index, tensor in enumerate(request.inputs):
                if tensor.name in inputs:
                    raise UserError(f"input {name_one(tensor.name)} is given twice")
                values = None if raw else _typed_contents(tensor, tensor.datatype)
                inputs[tensor.name] = functools.partial(decode_input, tensor.name, tensor.datatype, tuple(tensor.shape),
                                                        raw[index] if raw else None, values)
            servable, outputs = infer(core, request.model_name, request.model_version, inputs,
                                      [output.name for output in request.outputs], alive_check(context))
            response = service_pb2.ModelInferResponse(model_name=servable.name, model_version=str(servable.version),
                                                      id=request.id)
            for output, datatype, array in output_arrays(outputs):
                response.outputs.add(name=output, datatype=datatype, shape=list(array.shape))
                response.raw_output_contents.append(array.tobytes())
            return response

    return InferenceService(), service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, \
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
