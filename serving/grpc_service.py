"""TensorFlow Serving's gRPC API (PredictionService, ModelService) over an InferenceCore.

Bad input becomes INVALID_ARGUMENT and unknown model/version/signature NOT_FOUND, a full decode queue
RESOURCE_EXHAUSTED, a request dropped because its client left DEADLINE_EXCEEDED or CANCELLED: each logs
one line. Only a server fault (INTERNAL) logs a traceback. The server carries on either way.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import List

import grpc
import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2, prediction_service_pb2_grpc)

from revnet.common.errors import UserError
from revnet.serving import layout
from revnet.serving.inference import SIGNATURE_INPUTS, InferenceCore
from revnet.serving.metrics import UNKNOWN
from revnet.serving.outcomes import RequestAbandoned, classify_error, client_message, one_line
from revnet.serving.tensors import fill_shape, fill_tensor_proto, make_ndarray

log = logging.getLogger(__name__)

IMAGE_FEATURES = ("image/encoded", "image_bytes")


def _rpc(api):
    """Time the call, count it by model, version, `api` and status code, and turn errors into gRPC statuses."""
    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            started, code, response = time.perf_counter(), "OK", None
            try:
                response = method(self, request, context)
                return response
            except Exception as error:  # noqa: BLE001 - never kill the server thread on one request
                if isinstance(error, grpc.RpcError) or type(error).__name__ == "_AbortError":
                    raise
                code, fault = classify_error(error)
                if fault:
                    log.exception("%s failed", method.__name__)
                    message = f"internal error: {type(error).__name__}: {error}"
                else:
                    log.info("%s %s: %s", method.__name__, code, one_line(error))
                    message = str(error)
                context.abort(getattr(grpc.StatusCode, code), client_message(message))
            finally:
                model, version = _metric_labels(self.core.metrics, request, response)
                self.core.metrics.record_request(api, code, time.perf_counter() - started, model, version)
        return wrapper
    return decorator


def _metric_labels(metrics, request, response):
    """(model, version) labels: what served the request when it has an answer, else its (bounded) model spec."""
    if response is not None and hasattr(response, "model_spec"):
        return response.model_spec.name, str(response.model_spec.version.value)
    if response is not None and getattr(response, "model_name", ""):   # a v2 ModelInferResponse
        return response.model_name, response.model_version
    if hasattr(request, "model_spec"):
        return metrics.labels_for(request.model_spec.name, _version(request.model_spec))
    name = getattr(request, "model_name", None) or getattr(request, "name", None)   # v2 requests
    if name is None:  # a ReloadConfigRequest, ServerLive: no model
        return UNKNOWN, UNKNOWN
    version = getattr(request, "model_version", None) or getattr(request, "version", "")
    return metrics.labels_for(name, int(version) if str(version).isdigit() and len(version) < 19 else None)


def alive_check(context):
    """A check that raises RequestAbandoned once the RPC's deadline has passed or the client cancelled."""
    def check_alive():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise RequestAbandoned("the client's deadline passed before the request was served", deadline=True)
        if not context.is_active():
            raise RequestAbandoned("the client cancelled the request", deadline=False)
    return check_alive


def _version(model_spec):
    return model_spec.version.value if model_spec.HasField("version") else None


def _label(model_spec):
    return model_spec.version_label or None


def _servable(core, model_spec):
    """The servable a ModelSpec names: by version, by version_label, or the model's highest served version."""
    return core.models.get(model_spec.name, _version(model_spec), _label(model_spec))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    @_rpc("predict")
    def Predict(self, request, context):
        # Each tensor is built only after its header was checked against the signature and the limits.
        inputs = {name: functools.partial(make_ndarray, proto, name) for name, proto in request.inputs.items()}
        servable, outputs = self.core.predict(request.model_spec.name, _version(request.model_spec),
                                              request.model_spec.signature_name, inputs, list(request.output_filter),
                                              check_alive=alive_check(context), label=_label(request.model_spec))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature = self.core.resolve_signature(request.model_spec.signature_name, list(inputs))
        response.model_spec.signature_name = signature
        for name, value in outputs.items():
            fill_tensor_proto(response.outputs[name], value)
        return response

    @_rpc("classify")
    def Classify(self, request, context):
        kind = request.input.WhichOneof("kind")
        examples = (request.input.example_list.examples if kind == "example_list"
                    else request.input.example_list_with_context.examples if kind else [])
        self.core.check_rows(len(examples))
        image_bytes = [_example_image(example, index) for index, example in enumerate(examples)]
        servable, outputs = self.core.predict(request.model_spec.name, _version(request.model_spec), "predict_images",
                                              {"image_bytes": image_bytes}, ["probabilities"],
                                              check_alive=alive_check(context), label=_label(request.model_spec))
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name, response.model_spec.version.value = servable.name, servable.version
        response.model_spec.signature_name = "predict_images"
        for row in outputs["probabilities"]:
            classification = response.result.classifications.add()
            for index in np.argsort(-row, kind="stable"):
                classification.classes.add(label=servable.labels[index], score=float(row[index]))
        return response

    @_rpc("metadata")
    def GetModelMetadata(self, request, context):
        unknown = [field for field in request.metadata_field if field != "signature_def"]
        if unknown or not request.metadata_field:
            raise UserError(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        servable = _servable(self.core, request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name, response.model_spec.version.value = servable.name, servable.version
        response.metadata["signature_def"].Pack(signature_def_map(servable))
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    @_rpc("status")
    def GetModelStatus(self, request, context):
        """Every served version of the model, or the one its version or label names."""
        spec = request.model_spec
        repository = self.core.models.repository(spec.name)
        versions = [_servable(self.core, spec).version] if (_version(spec) or _label(spec)) else repository.versions()
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(versions, reverse=True):
            status = response.model_version_status.add(version=version,
                                                       state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            status.status.error_code = 0
        return response

    @_rpc("reload")
    def HandleReloadConfigRequest(self, request, context):
        """Serve the request's ModelServerConfig instead; a config that fails any check is INVALID_ARGUMENT
        and the old one keeps serving."""
        from revnet.serving.model_config import parse_model_config

        entries = parse_model_config(request.config, self.core.config.backend, where="the ReloadConfigRequest")
        self.core.models.reload(entries)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


def _example_image(example, index: int) -> bytes:
    for key in IMAGE_FEATURES:
        if key in example.features.feature:
            values = example.features.feature[key].bytes_list.value
            if len(values) == 1:
                return values[0]
    raise UserError(f"example {index} has no single bytes feature {' or '.join(map(repr, IMAGE_FEATURES))} "
                    f"holding a JPEG/PNG image")


def signature_def_map(servable):
    """The SignatureDefMap of the exported SavedModel, for GetModelMetadata (the same for both backends)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    size, classes = servable.input_size, servable.num_classes

    def info(name, dtype, dims):
        tensor_info = meta_graph_pb2.TensorInfo(name=name, dtype=dtype)
        fill_shape(tensor_info.tensor_shape, dims)
        return tensor_info

    outputs = {"probabilities": info("probabilities", types_pb2.DT_FLOAT, [-1, classes]),
               "classes": info("classes", types_pb2.DT_INT64, [-1]),
               "logits": info("logits", types_pb2.DT_FLOAT, [-1, classes])}
    inputs = {"serving_default": info("images", types_pb2.DT_FLOAT, [-1, size, size, 3]),
              "predict_images": info("image_bytes", types_pb2.DT_STRING, [-1])}
    result = get_model_metadata_pb2.SignatureDefMap()
    for signature, input_name in SIGNATURE_INPUTS.items():
        definition = result.signature_def[signature]
        definition.method_name = "tensorflow/serving/predict"
        definition.inputs[input_name].CopyFrom(inputs[signature])
        for name in layout.OUTPUTS:
            definition.outputs[name].CopyFrom(outputs[name])
    return result


def add_services(server: grpc.Server, core: InferenceCore) -> List[str]:
    """Register PredictionService, ModelService and the Open Inference Protocol's GRPCInferenceService;
    their full names, for server reflection."""
    from revnet.serving.kserve import make_grpc_service

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    v2_service, v2_name, add_v2 = make_grpc_service(core, _rpc, alive_check)
    add_v2(v2_service, server)
    return [prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name, v2_name]
