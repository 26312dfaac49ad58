"""TF Serving's REST API (predict and model status) and the Prometheus endpoint on one HTTP port."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from revnet.common.errors import UserError
from revnet.serving.inference import InferenceCore

log = logging.getLogger(__name__)

PREDICT_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
STATUS_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")
METRICS_PATHS = ("/metrics", "/monitoring/prometheus/metrics")
MAX_BODY_BYTES = 64 * 1024 * 1024


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_b64(value) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise UserError("a {\"b64\": ...} value is not valid base64") from None


def _to_input(values):
    """JSON values -> ('image_bytes', [bytes]) or ('images', float32 array)."""
    if isinstance(values, list) and values and all(_is_b64(v) for v in values):
        return "image_bytes", [_decode_b64(v) for v in values]
    try:
        return "images", np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError("instances must be nested lists of numbers [batch,H,W,3] or {\"b64\": ...} images") from None


def parse_predict_body(body: dict):
    """(signature, inputs, row_format) from a TF Serving REST predict body."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise UserError("the JSON body needs exactly one of 'instances' (rows) or 'inputs' (columns)")
    signature = body.get("signature_name", "")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise UserError("'instances' must be a list")
        if instances and all(isinstance(row, dict) and not _is_b64(row) for row in instances):
            names = {name for row in instances for name in row}
            if len(names) != 1:
                raise UserError(f"each instance must name the same single input, got {sorted(names)}")
            instances = [row[next(iter(names))] for row in instances]
        name, value = _to_input(instances)
        return signature, {name: value}, True
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        if len(inputs) != 1:
            raise UserError(f"'inputs' must hold exactly one input, got {sorted(inputs)}")
        key, inputs = next(iter(inputs.items()))
        name, value = _to_input(inputs)
        if key != name:
            raise UserError(f"input {key!r} does not match its values (they look like {name!r})")
    else:
        name, value = _to_input(inputs)
    return signature, {name: value}, False


def make_handler(core: InferenceCore):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # route http.server's access log through logging
            log.debug("%s " + format, self.address_string(), *args)

        def _reply(self, status: int, payload, content_type="application/json"):
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path in METRICS_PATHS:
                return self._reply(200, core.metrics.render(), "text/plain; version=0.0.4")
            match = STATUS_PATH.match(self.path)
            if not match:
                return self._reply(404, {"error": f"unknown path {self.path}"})
            try:
                servable = core.repository.get(match.group(1), int(match.group(2)) if match.group(2) else None)
            except UserError as error:
                return self._reply(404, {"error": str(error)})
            self._reply(200, {"model_version_status": [{"version": str(servable.version), "state": "AVAILABLE",
                                                        "status": {"error_code": "OK", "error_message": ""}}]})

        def do_POST(self):
            started, code = time.perf_counter(), 200
            try:
                match = PREDICT_PATH.match(self.path)
                if not match:
                    raise UserError(f"unknown path {self.path}; expected /v1/models/NAME[/versions/N]:predict", not_found=True)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise UserError(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as error:
                    raise UserError(f"the body is not valid JSON ({error})") from None
                signature, inputs, rows = parse_predict_body(body)
                version = int(match.group(2)) if match.group(2) else None
                _, outputs = core.predict(match.group(1), version, signature, inputs)
                outputs = {name: value.tolist() for name, value in outputs.items()}
                if rows:
                    count = len(next(iter(outputs.values())))
                    payload = {"predictions": [{name: value[i] for name, value in outputs.items()} for i in range(count)]}
                else:
                    payload = {"outputs": outputs}
                self._reply(200, payload)
            except UserError as error:
                code = 404 if error.not_found else 400
                self._reply(code, {"error": str(error)})
            except Exception as error:  # noqa: BLE001 - one bad request must not stop the server
                code = 500
                log.exception("REST predict failed")
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})
            finally:
                core.metrics.record_request("RestPredict", str(code), time.perf_counter() - started)

    return Handler


def start_http(core: InferenceCore, host: str, port: int):
    """A daemon-thread HTTP server; returns it (`.server_address[1]` is the bound port)."""
    server = ThreadingHTTPServer((host, port), make_handler(core))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
