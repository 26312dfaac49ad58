"""TF Serving's REST API (predict and model status), the Open Inference Protocol's (KServe v2: /v2/health,
/v2/models/..., .../infer, serving/kserve.py) and the Prometheus endpoint (/monitoring/prometheus/metrics, as
TF Serving, and /metrics) on one HTTP port.

Python's http.server, with every input bounded explicitly (nothing in the pinned dependency set offers
an HTTP server with request timeouts and body limits):
- length: Content-Length must be plain decimal digits (a missing, negative or non-numeric one is 400,
  chunked bodies are 411) and at most MAX_BODY_BYTES (413); nothing is read before that check;
- time: the request line, headers and body must arrive within `rest_timeout_seconds` altogether, enforced
  on every socket read (a client that announces a body and never sends it gets 408 and its thread back);
- depth: JSON nested deeper than MAX_JSON_DEPTH (a request needs 6) is 400 before it is parsed, as is any
  malformed body;
- connections: at most `rest_max_connections` open at once (one more is answered 503 and closed) and at
  most `rest_max_connections_per_client` from one address (429). After an error that leaves a body
  unread, the rest is read and dropped until the request's deadline (at least a second more) so the
  client sees the answer rather than a connection reset.
Client errors log one line; a 500 (a server fault) logs a traceback. Responses are strict JSON: a
non-finite number is a server fault, never a bare NaN token.
"""
from __future__ import annotations

import base64
import binascii
import collections
import io
import json
import logging
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from revnet.common.errors import UserError
from revnet.serving import kserve
from revnet.serving.json_body import parse_json_bytes
from revnet.serving.inference import InferenceCore
from revnet.serving.outcomes import RequestAbandoned, classify_error, client_message, name_some, one_line
from revnet.serving.metrics import UNKNOWN

log = logging.getLogger(__name__)

# /v1/models/NAME[/versions/N | /labels/LABEL], then :predict for a prediction (TF Serving's REST paths).
MODEL_PATH = r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d{1,18})|/labels/(?P<label>[^/:]+))?"
PREDICT_PATH = re.compile(MODEL_PATH + r":predict$")
# The Open Inference Protocol's: /v2/models/NAME[/versions/N][/ready | /infer].
V2_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<ready>/ready)?$")
V2_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
STATUS_PATH = re.compile(MODEL_PATH + r"$")
METRICS_PATHS = ("/metrics", "/monitoring/prometheus/metrics")
MAX_BODY_BYTES = 64 * 1024 * 1024
CONTENT_LENGTH = re.compile(r"^[0-9]{1,12}$")
DRAIN_LIMIT_BYTES = 2 * MAX_BODY_BYTES
DRAIN_GRACE_SECONDS = 1.0
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 408,
               "CANCELLED": 408, "INTERNAL": 500}


class HttpError(UserError):
    """A client error with its own HTTP status (411, 413, 408); the connection is closed after it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _DeadlineReader(io.RawIOBase):
    """The socket's read side, where every recv waits at most until the current request's deadline."""

    def __init__(self, sock: socket.socket, timeout_seconds: float):
        self.sock, self.timeout_seconds, self.deadline = sock, timeout_seconds, None

    def readable(self) -> bool:
        return True

    def start_request(self) -> None:
        self.deadline = time.monotonic() + self.timeout_seconds

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic() if self.deadline is not None else self.timeout_seconds
        if remaining <= 0:
            raise TimeoutError(f"the request did not arrive within {self.timeout_seconds:g} s")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed its side (readable with nothing to read)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0)) and not sock.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return True


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
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise UserError("instances must be nested lists of numbers [batch,H,W,3] or {\"b64\": ...} images") from None


def parse_predict_body(body: dict):
    """(signature, inputs, row_format) from a TF Serving REST predict body."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise UserError("the JSON body needs exactly one of 'instances' (rows) or 'inputs' (columns)")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise UserError(f"'signature_name' must be a string, got {type(signature).__name__}")
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
            raise UserError(f"'inputs' must hold exactly one input, got {name_some(inputs)}")
        key, inputs = next(iter(inputs.items()))
        name, value = _to_input(inputs)
        if key != name:
            raise UserError(f"input {key!r} does not match its values (they look like {name!r})")
    else:
        name, value = _to_input(inputs)
    return signature, {name: value}, False


def _read_body(handler) -> bytes:
    """The request's body, with its length and arrival time bounded; HttpError otherwise."""
    if handler.headers.get("Transfer-Encoding"):
        raise HttpError(411, "chunked request bodies are not supported; send a Content-Length")
    length_text = (handler.headers.get("Content-Length") or "").strip()
    if not CONTENT_LENGTH.match(length_text):
        raise HttpError(400, f"Content-Length must be a non-negative decimal integer, got {length_text[:40]!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")
    try:
        data = handler.rfile.read(length)
    except TimeoutError as error:
        raise HttpError(408, f"{error}; the body was announced as {length} bytes") from None
    if len(data) != length:
        raise HttpError(400, f"the body ended after {len(data)} of the {length} bytes announced by Content-Length")
    return data


def _model_spec(match):
    """(name, version or None, label or None) from a matched model path."""
    return match.group("name"), int(match.group("version")) if match.group("version") else None, match.group("label")


def _predict_payload(outputs, rows: bool) -> dict:
    outputs = {name: value.tolist() for name, value in outputs.items()}
    if not rows:
        return {"outputs": outputs}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: value[i] for name, value in outputs.items()} for i in range(count)]}


def make_handler(core: InferenceCore, timeout_seconds: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self._reader = _DeadlineReader(self.connection, timeout_seconds)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self):
            self._reader.start_request()
            super().handle_one_request()

        def log_message(self, format, *args):  # route http.server's access log through logging
            log.debug("%s " + format, self.address_string(), *args)

        def log_error(self, format, *args):  # malformed request lines, timeouts: one line each
            log.info("REST %s: %s", self.address_string(), one_line(format % args))

        def _reply(self, status: int, payload, content_type="application/json", headers=()):
            if isinstance(payload, str):
                payload = payload.encode()
            data = payload if isinstance(payload, bytes) else json.dumps(payload, allow_nan=False).encode()
            self.connection.settimeout(timeout_seconds)  # a client that never reads the answer cannot hold us
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for header, value in headers:
                self.send_header(header, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":   # HEAD: the headers (Content-Length included) without the body
                self.wfile.write(data)

        def __getattr__(self, name):
            # http.server answers a method without a do_* handler with an HTML 501 page; every other method
            # (PUT, DELETE, PATCH, OPTIONS, HEAD, TRACE, made-up ones) gets a JSON 405 naming the two we serve.
            if name.startswith("do_"):
                return self._method_not_allowed
            raise AttributeError(name)

        def _method_not_allowed(self):
            self.close_connection = True  # a body, if any, is not read
            started = time.perf_counter()
            try:
                self._reply(405, {"error": f"method {self.command[:32]} is not allowed; this API serves GET "
                                           f"(status, metrics) and POST (predict)"}, headers=[("Allow", "GET, POST")])
            except ConnectionError:
                pass
            finally:
                core.metrics.record_request("rest_other", "405", time.perf_counter() - started, UNKNOWN, UNKNOWN)

        def do_GET(self):
            path = self.path.partition("?")[0]
            if path in METRICS_PATHS:
                return self._reply(200, core.metrics.render(), core.metrics.CONTENT_TYPE)
            if path == "/v2" or path.startswith("/v2/"):
                return self._v2_get(path)
            match = STATUS_PATH.match(self.path)
            if not match:
                return self._reply(404, {"error": client_message(f"unknown path {self.path}")})
            started, status = time.perf_counter(), 404
            name, version, label = _model_spec(match)
            try:
                try:
                    repository = core.models.repository(name)
                    versions = [core.models.get(name, version, label).version] if (version or label) \
                        else repository.versions()
                except UserError as error:
                    return self._reply(404, {"error": client_message(error)})
                status = 200
                self._reply(200, {"model_version_status": [
                    {"version": str(served), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                    for served in sorted(versions, reverse=True)]})
            finally:
                core.metrics.record_request("rest_status", str(status), time.perf_counter() - started,
                                            *core.metrics.labels_for(name, version))

        def _drain(self):
            """Drop what the client still sends after our answer (so it reads the answer rather than a reset),
            until the request's own deadline (at least DRAIN_GRACE_SECONDS more) and DRAIN_LIMIT_BYTES.

            A client that sent nothing holds its slot for the timeout and the grace, not for twice the timeout."""
            start = self._reader.deadline if self._reader.deadline is not None else time.monotonic() + timeout_seconds
            deadline, drained = max(start, time.monotonic() + min(DRAIN_GRACE_SECONDS, timeout_seconds)), 0
            try:
                self.connection.shutdown(socket.SHUT_WR)
                while drained < DRAIN_LIMIT_BYTES and time.monotonic() < deadline:
                    self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = self.connection.recv(1 << 16)
                    if not chunk:
                        break
                    drained += len(chunk)
            except OSError:
                pass

        def _answer_error(self, status: int, message: str, abandoned: bool):
            if abandoned:
                self.close_connection = True  # the client is gone or going: answer if it still reads
            try:
                self._reply(status, {"error": client_message(message)})
                if self.close_connection:
                    self._drain()
            except ConnectionError:
                self.close_connection = True

        def check_alive(self):
            if _client_gone(self.connection):
                raise RequestAbandoned("the client closed the connection", deadline=False)

        def do_POST(self):
            started, status, labels, api = time.perf_counter(), 200, (UNKNOWN, UNKNOWN), "rest_predict"
            try:
                v2 = V2_INFER_PATH.match(self.path)
                if v2:
                    api = "rest_v2_infer"
                    labels = self._v2_infer(v2.group("name"), v2.group("version"))
                    return
                match = PREDICT_PATH.match(self.path)
                if not match:
                    self.close_connection = True  # the body is not read
                    raise UserError(f"unknown path {self.path}; expected /v1/models/NAME[/versions/N | "
                                    f"/labels/LABEL]:predict or /v2/models/NAME[/versions/N]/infer", not_found=True)
                name, version, label = _model_spec(match)
                labels = core.metrics.labels_for(name, version)
                signature, inputs, rows = parse_predict_body(parse_json_bytes(self._body()))
                servable, outputs = core.predict(name, version, signature, inputs, check_alive=self.check_alive,
                                                 label=label)
                labels = (servable.name, str(servable.version))
                self._answer(lambda: self._reply(200, _predict_payload(outputs, rows)))
            except Exception as error:  # noqa: BLE001 - one bad request must not stop the server
                code, fault = classify_error(error)
                status = error.status if isinstance(error, HttpError) else HTTP_STATUS[code]
                if fault:
                    log.exception("REST %s failed", api)
                    message = f"internal error: {type(error).__name__}: {error}"
                else:
                    log.info("REST %s %d: %s", api, status, one_line(error))
                    message = str(error)
                self._answer_error(status, message, abandoned=isinstance(error, RequestAbandoned))
            finally:
                core.metrics.record_request(api, str(status), time.perf_counter() - started, *labels)

        def _body(self) -> bytes:
            try:
                return _read_body(self)
            except HttpError:
                self.close_connection = True  # the rest of the body may still be on its way
                raise

        def _answer(self, reply):
            try:
                reply()
            except ValueError as error:  # allow_nan=False: the model produced a non-finite value
                raise RuntimeError(f"the model returned a non-finite value ({error})") from None
            except ConnectionError as error:  # the client left before its answer: its doing, one line
                raise RequestAbandoned(f"the client closed the connection ({error})", deadline=False) from None

        def _v2_infer(self, name: str, version_text):
            """An Open Inference Protocol infer request (JSON, or JSON + binary tensors); its metric labels."""
            labels = core.metrics.labels_for(name, kserve.parse_version(version_text))
            header_text = self.headers.get(kserve.BINARY_HEADER)
            if header_text is not None and not CONTENT_LENGTH.match(header_text.strip()):
                self.close_connection = True
                raise UserError(f"{kserve.BINARY_HEADER} must be a decimal integer, got {header_text[:40]!r}")
            body = self._body()
            payload, json_length = kserve.rest_infer(core, name, version_text, body,
                                                     int(header_text) if header_text is not None else None,
                                                     check_alive=self.check_alive)
            if json_length is None:
                self._answer(lambda: self._reply(200, payload))
            else:
                self._answer(lambda: self._reply(200, payload, "application/octet-stream",
                                                 headers=[(kserve.BINARY_HEADER, str(json_length))]))
            return labels

        def _v2_get(self, path: str):
            """Open Inference Protocol health, readiness and metadata."""
            started, status, labels = time.perf_counter(), 200, (UNKNOWN, UNKNOWN)
            try:
                if path == "/v2/health/live":
                    return self._reply(200, {"live": True})
                if path == "/v2/health/ready":
                    ready = kserve.server_ready(core)
                    status = 200 if ready else 400
                    return self._reply(status, {"ready": ready})
                if path == "/v2":
                    return self._reply(200, kserve.server_metadata())
                match = V2_MODEL_PATH.match(path)
                if not match:
                    status = 404
                    return self._reply(404, {"error": client_message(f"unknown path {path}")})
                name, version_text = match.group("name"), match.group("version")
                labels = core.metrics.labels_for(name, None)
                if match.group("ready"):
                    ready = kserve.model_ready(core, name, version_text)
                    status = 200 if ready else 400
                    return self._reply(status, {"name": name[:200], "ready": ready})
                try:
                    metadata = kserve.model_metadata(core, name, version_text)
                except UserError as error:
                    status = 404 if error.not_found else 400
                    return self._reply(status, {"error": client_message(error)})
                return self._reply(200, metadata)
            finally:
                core.metrics.record_request("rest_v2_metadata", str(status), time.perf_counter() - started, *labels)

    return Handler


class RestServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with caps on open connections, in all and per client address: one more is
    answered (503 when the server is full, 429 when that client is at its share) and closed."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    request_queue_size = 128  # listen backlog; socketserver's 5 drops bursts of connects (1 s SYN retries)

    def __init__(self, address, handler, max_connections: int, max_per_client: int):
        super().__init__(address, handler)
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.open_connections, self._per_client = 0, collections.Counter()
        self._count_lock = threading.Lock()

    def _refusal(self, client: str):
        """None when the connection may open (and is counted), else (status, reason, message)."""
        with self._count_lock:
            if self.open_connections >= self.max_connections:
                return 503, "Service Unavailable", f"the server has {self.max_connections} open REST connections"
            if self._per_client[client] >= self.max_per_client:
                return 429, "Too Many Requests", (f"this client already has {self.max_per_client} open REST "
                                                  f"connections (--rest-max-connections-per-client)")
            self.open_connections += 1
            self._per_client[client] += 1
            return None

    def process_request(self, request, client_address):
        refusal = self._refusal(client_address[0])
        if refusal:
            status, reason, message = refusal
            body = json.dumps({"error": message + "; retry later"})
            try:
                request.sendall((f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                                 f"{body}").encode())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.open_connections -= 1
                self._per_client[client_address[0]] -= 1
                if not self._per_client[client_address[0]]:
                    del self._per_client[client_address[0]]

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away mid-answer: its problem, one line
            log.info("REST %s: connection error: %s", client_address[0], one_line(error))
        else:
            log.exception("REST connection from %s failed", client_address[0])


def start_http(core: InferenceCore) -> RestServer:
    """A daemon-thread HTTP server on the core's host and REST port; `.server_address[1]` is the bound port."""
    config = core.config
    server = RestServer((config.host, config.rest_port), make_handler(core, config.rest_timeout_seconds),
                        config.rest_max_connections, config.rest_max_connections_per_client)
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
