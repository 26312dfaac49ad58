"""TF Serving's REST API (predict and model status), the Open Inference Protocol's (KServe v2: /v2/health,
/v2/models/..., .../infer, serving/kserve.py) and the Prometheus endpoint (/monitoring/prometheus/metrics, as
TF Serving, and /metrics) on one HTTP port.

A starlette app served by uvicorn (its h11 protocol, asyncio loop) in one background thread; the model work
(JSON parsing, decode, inference, encoding the answer) runs on worker threads, so a slow model never holds
the event loop. Every input is bounded:
- length: a Content-Length that is not plain decimal digits is 400 (h11 refuses it before the app runs;
  the answer is JSON, like every other error), a POST without one and not chunked is 400, a body over
  MAX_BODY_BYTES is 413 (from the Content-Length before anything is read, or counted while a chunked body
  streams in); request line and headers still incomplete after MAX_HEADER_BYTES are 431 (h11's limit);
- time: the request line, headers and body must arrive within `rest_timeout_seconds` altogether (a client
  that announces a body and never sends it gets 408, a client stuck in its headers too); an idle keep-alive
  connection is closed after the same time;
- depth: JSON nested deeper than MAX_JSON_DEPTH (a request needs 6) is 400 before it is parsed, as is any
  malformed body;
- connections: at most `rest_max_connections` open at once (uvicorn's `limit_concurrency`: a request on one
  more is answered 503, uvicorn's plain-text one, and closed) and at most `rest_max_connections_per_client`
  from one address (one more is answered 429 with Retry-After and closed as it connects). After an error
  that leaves a body unread, the rest is read and dropped until the request's deadline (at least
  DRAIN_GRACE_SECONDS more) so the client sees the answer rather than a connection reset.
Client errors log one line; a 500 (a server fault) logs a traceback. Responses are strict JSON: a
non-finite number is a server fault, never a bare NaN token.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import http
import json
import logging
import re
import socket
import sys
import threading
import time
from typing import Optional

import anyio
import h11
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

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
MAX_HEADER_BYTES = 64 * 1024  # request line and headers (h11's incomplete-event limit)
CONTENT_LENGTH = re.compile(r"^[0-9]{1,12}$")
DRAIN_LIMIT_BYTES = 2 * MAX_BODY_BYTES
DRAIN_GRACE_SECONDS = 1.0
STOP_GRACE_SECONDS = 1.0  # stop(): in-flight requests get this long to finish, then they are cancelled
LISTEN_BACKLOG = 128
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 408,
               "CANCELLED": 408, "INTERNAL": 500}


class HttpError(UserError):
    """A client error with its own HTTP status (413, 408, ...); the connection is closed after it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def _model_spec(match):
    """(name, version or None, label or None) from a matched model path."""
    return match.group("name"), int(match.group("version")) if match.group("version") else None, match.group("label")


def _predict_payload(outputs, rows: bool) -> dict:
    outputs = {name: value.tolist() for name, value in outputs.items()}
    if not rows:
        return {"outputs": outputs}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: value[i] for name, value in outputs.items()} for i in range(count)]}


def _encode(payload) -> bytes:
    """Strict JSON: a non-finite number is the model's fault (500), never a bare NaN token."""
    try:
        return json.dumps(payload, allow_nan=False).encode()
    except ValueError as error:
        raise RuntimeError(f"the model returned a non-finite value ({error})") from None


class _Reply:
    """An answer built off the event loop: status, body, content type and extra headers."""

    def __init__(self, status: int, payload, content_type: str = "application/json", headers=None):
        self.status, self.content_type, self.headers = status, content_type, dict(headers or {})
        self.body = payload if isinstance(payload, bytes) else _encode(payload)

    def response(self) -> Response:
        return Response(self.body, self.status, headers=self.headers, media_type=self.content_type)


def _error(status: int, message, close: bool = False) -> _Reply:
    return _Reply(status, {"error": client_message(message)}, headers={"Connection": "close"} if close else None)


class _Api:
    """The REST API's handlers: TF Serving's and the Open Inference Protocol's paths on every method."""

    def __init__(self, rest: "RestServer"):
        self.rest, self.core = rest, rest.core
        self._limiter = None

    async def __call__(self, scope, receive, send):  # the ASGI endpoint of the app's one route
        request = Request(scope, receive)
        try:
            if request.method == "GET":
                reply = await self._in_thread(self._get, request.url.path)
            elif request.method == "POST":
                reply = await self._post(request)
            else:
                reply = self._method_not_allowed(request.method)
        except asyncio.CancelledError:  # stop() after its grace: the request ends here, with an answer
            reply = _error(503, "the server is stopping; retry", close=True)
        await reply.response()(scope, receive, send)

    async def _in_thread(self, function, *args, **kwargs):
        """`function` on a worker thread (at most one per allowed connection), off the event loop."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.core.config.rest_max_connections + 1)
        return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs), limiter=self._limiter)

    def _method_not_allowed(self, method: str) -> _Reply:
        # Every method but the two served (PUT, DELETE, PATCH, OPTIONS, HEAD, TRACE, made-up ones) gets a JSON
        # 405 naming them; a body, if any, is not read.
        started = time.perf_counter()
        try:
            return _Reply(405, {"error": f"method {method[:32]} is not allowed; this API serves GET (model "
                                         "status, /v2 health and metadata, metrics) and POST (predict, /v2 "
                                         "infer)"},
                          headers={"Allow": "GET, POST", "Connection": "close"})
        finally:
            self.core.metrics.record_request("rest_other", "405", time.perf_counter() - started, UNKNOWN, UNKNOWN)

    def _get(self, path: str) -> _Reply:
        core = self.core
        if path in METRICS_PATHS:
            return _Reply(200, core.metrics.render(), core.metrics.CONTENT_TYPE)
        if path == "/v2" or path.startswith("/v2/"):
            return self._v2_get(path)
        match = STATUS_PATH.match(path)
        if not match:
            return _error(404, f"unknown path {path}")
        started, status = time.perf_counter(), 404
        name, version, label = _model_spec(match)
        try:
            try:
                repository = core.models.repository(name)
                versions = [core.models.get(name, version, label).version] if (version or label) \
                    else repository.versions()
            except UserError as error:
                return _error(404, error)
            status = 200
            return _Reply(200, {"model_version_status": [
                {"version": str(served), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for served in sorted(versions, reverse=True)]})
        finally:
            core.metrics.record_request("rest_status", str(status), time.perf_counter() - started,
                                        *core.metrics.labels_for(name, version))

    def _v2_get(self, path: str) -> _Reply:
        """Open Inference Protocol health, readiness and metadata."""
        core = self.core
        started, status, labels = time.perf_counter(), 200, (UNKNOWN, UNKNOWN)
        try:
            if path == "/v2/health/live":
                return _Reply(200, {"live": True})
            if path == "/v2/health/ready":
                ready = kserve.server_ready(core)
                status = 200 if ready else 400
                return _Reply(status, {"ready": ready})
            if path == "/v2":
                return _Reply(200, kserve.server_metadata())
            match = V2_MODEL_PATH.match(path)
            if not match:
                status = 404
                return _error(404, f"unknown path {path}")
            name, version_text = match.group("name"), match.group("version")
            labels = core.metrics.labels_for(name, None)
            if match.group("ready"):
                ready = kserve.model_ready(core, name, version_text)
                status = 200 if ready else 400
                return _Reply(status, {"name": name[:200], "ready": ready})
            try:
                metadata = kserve.model_metadata(core, name, version_text)
            except UserError as error:
                status = 404 if error.not_found else 400
                return _error(status, error)
            return _Reply(200, metadata)
        finally:
            core.metrics.record_request("rest_v2_metadata", str(status), time.perf_counter() - started, *labels)

    async def _post(self, request: Request) -> _Reply:
        core, path = self.core, request.url.path
        started, status, labels, api = time.perf_counter(), 200, (UNKNOWN, UNKNOWN), "rest_predict"
        body_read, gone, watcher = False, threading.Event(), None

        def check_alive():
            if gone.is_set():
                raise RequestAbandoned("the client closed the connection", deadline=False)

        try:
            v2 = V2_INFER_PATH.match(path)
            match = None if v2 else PREDICT_PATH.match(path)
            if v2:
                api, name, version_text = "rest_v2_infer", v2.group("name"), v2.group("version")
                labels = core.metrics.labels_for(name, kserve.parse_version(version_text))
                header_text = request.headers.get(kserve.BINARY_HEADER)
                if header_text is not None and not CONTENT_LENGTH.match(header_text.strip()):
                    raise UserError(f"{kserve.BINARY_HEADER} must be a decimal integer, got {header_text[:40]!r}")
            elif match:
                name, version, label = _model_spec(match)
                labels = core.metrics.labels_for(name, version)
            else:
                raise UserError(f"unknown path {path}; expected /v1/models/NAME[/versions/N | "
                                f"/labels/LABEL]:predict or /v2/models/NAME[/versions/N]/infer", not_found=True)
            body = await self._body(request)
            body_read, watcher = True, asyncio.ensure_future(_watch_disconnect(request, gone))
            if v2:
                header_length = int(header_text) if header_text is not None else None
                reply = await self._in_thread(self._v2_infer, name, version_text, body, header_length, check_alive)
            else:
                labels, reply = await self._in_thread(self._predict, name, version, label, body, check_alive)
            check_alive()  # the client left before its answer: its doing, one line
            return reply
        except asyncio.CancelledError:
            status = 503
            raise
        except Exception as error:  # noqa: BLE001 - one bad request must not stop the server
            code, fault = classify_error(error)
            status = error.status if isinstance(error, HttpError) else HTTP_STATUS[code]
            if fault:
                log.exception("REST %s failed", api)
                message = f"internal error: {type(error).__name__}: {error}"
            else:
                log.info("REST %s %d: %s", api, status, one_line(error))
                message = str(error)
            # An unread body, or a client going away: the connection closes after the answer.
            return _error(status, message, close=not body_read or isinstance(error, RequestAbandoned))
        finally:
            if watcher is not None:
                watcher.cancel()
            core.metrics.record_request(api, str(status), time.perf_counter() - started, *labels)

    def _predict(self, name, version, label, body: bytes, check_alive):
        """(metric labels, reply) for a TF Serving predict body."""
        signature, inputs, rows = parse_predict_body(parse_json_bytes(body))
        servable, outputs = self.core.predict(name, version, signature, inputs, check_alive=check_alive, label=label)
        return (servable.name, str(servable.version)), _Reply(200, _predict_payload(outputs, rows))

    def _v2_infer(self, name: str, version_text, body: bytes, header_length, check_alive) -> _Reply:
        """An Open Inference Protocol infer request (JSON, or JSON + binary tensors)."""
        payload, json_length = kserve.rest_infer(self.core, name, version_text, body, header_length,
                                                 check_alive=check_alive)
        if json_length is None:
            return _Reply(200, payload)
        return _Reply(200, payload, "application/octet-stream", headers={kserve.BINARY_HEADER: str(json_length)})

    async def _body(self, request: Request) -> bytes:
        """The request's body, by its deadline and within MAX_BODY_BYTES; HttpError otherwise."""
        length_text = request.headers.get("content-length")  # plain digits: h11 refused anything else
        if length_text is None and "chunked" not in request.headers.get("transfer-encoding", "").lower():
            raise HttpError(400, "Content-Length must be a non-negative decimal integer, got none (or send the "
                                 "body with Transfer-Encoding: chunked)")
        announced = f"{length_text} bytes" if length_text is not None else "chunked"
        timeout = self.rest.timeout_seconds

        if length_text is not None and int(length_text) > MAX_BODY_BYTES:  # before anything is read
            raise HttpError(413, f"request body of {length_text} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:  # a chunked body, counted as it streams in
                    raise HttpError(413, f"the chunked request body exceeds the limit of {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), max(self.rest.deadline_of(request.client) - time.monotonic(), 0))
        except asyncio.TimeoutError:
            raise HttpError(408, f"the request did not arrive within {timeout:g} s; the body was announced as "
                                 f"{announced}") from None
        except ClientDisconnect:
            raise RequestAbandoned(f"the client closed the connection before its body ({announced}) arrived",
                                   deadline=False) from None


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client hangs up (the body is read: what uvicorn reports next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _raw_answer(status: int, message: str, headers=()) -> bytes:
    """A complete JSON error answer written straight to a connection (before or outside h11's request cycle)."""
    body = json.dumps({"error": client_message(message)}).encode()
    reason = http.HTTPStatus(status).phrase
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{head}Connection: close\r\n\r\n").encode() + body


class _DroppedUvicornLines(logging.Filter):
    """uvicorn's bare line for a malformed request: the protocol below logs it once with its reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


_HTTP_LOG = logging.getLogger(__name__ + ".http")  # what uvicorn's protocol logs about this server's connections
_HTTP_LOG.addFilter(_DroppedUvicornLines())


class _Transport:
    """A connection's transport as uvicorn's protocol sees it: close() goes through `_RestProtocol.close`,
    which may first drain what the client still sends."""

    def __init__(self, transport: asyncio.Transport, protocol: "_RestProtocol"):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close()

    def is_closing(self) -> bool:
        return self._protocol.draining or self._transport.is_closing()


class _RestProtocol(H11Protocol):
    """uvicorn's h11 protocol with this server's bounds on a connection: a cap per client address (429 as it
    connects), a deadline for each request's request line, headers and body, JSON answers to malformed
    requests, and a bounded drain of an unread body before the connection closes."""

    rest: "RestServer"  # set on the per-server subclass

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logger = _HTTP_LOG
        self.raw, self.host, self.admitted, self.draining, self.stopping = None, "", False, False, False
        self.deadline, self.partial, self.drained, self._timer = 0.0, False, 0, None

    def connection_made(self, transport) -> None:
        self.raw = transport
        peer = get_remote_addr(transport)
        self.host = peer[0] if peer else ""
        refusal = self.rest.admit(self.host)
        if refusal:
            transport.write(_raw_answer(429, refusal, [("Retry-After", "1")]))
            transport.close()
            return
        self.admitted = True
        super().connection_made(_Transport(transport, self))
        self.rest.protocols[self.client] = self
        self._start_request_clock()

    def _start_request_clock(self) -> None:
        """The next request (its first byte not yet here) must arrive in full by `deadline`."""
        self._cancel_timer()
        self.deadline, self.partial = time.monotonic() + self.rest.timeout_seconds, False
        self._timer = self.loop.call_later(self.rest.timeout_seconds, self._request_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _request_timed_out(self) -> None:
        self._timer = None
        if self.draining or self.raw.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request being handled: the app bounds the rest of its body (408) itself
        if self.partial:  # stuck in its request line or headers
            log.info("REST %s 408: the request headers did not arrive within %g s", self.host,
                     self.rest.timeout_seconds)
            self.raw.write(_raw_answer(408, f"the request did not arrive within {self.rest.timeout_seconds:g} s"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.draining:
            self.drained += len(data)
            if self.drained >= DRAIN_LIMIT_BYTES:
                self.raw.close()
            return
        if self.cycle is None or self.cycle.response_complete:
            self.partial = True  # the next request has begun to arrive
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self.partial = False  # its headers are in: the app reads (and bounds) the body

    def eof_received(self):
        if self.draining:
            self.raw.close()
        return None  # asyncio closes the transport: a client that half-closes is gone

    def on_response_complete(self) -> None:
        if not self.raw.is_closing() and not self.draining:
            self._start_request_clock()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (called while handling its RemoteProtocolError): a JSON answer, one line."""
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400) or 400
        reason = str(error) if error is not None else msg
        if "content-length" in reason.lower():
            reason = f"Content-Length must be a non-negative decimal integer ({reason})"
        log.info("REST %s %d: %s", self.host, status, one_line(reason))
        self.rest.core.metrics.record_request("rest_other", str(status), 0.0, UNKNOWN, UNKNOWN)
        self.raw.write(_raw_answer(status, reason))
        self.transport.close()

    def close(self) -> None:
        """Close after an answer; when the client may still be sending (a body unread, headers cut short),
        first shut the write side and drop what arrives until the deadline, so it reads the answer."""
        if self.draining or self.raw.is_closing():
            return
        self._cancel_timer()
        unread = self.partial or self.conn.their_state in (h11.SEND_BODY, h11.ERROR)
        if self.stopping or not unread:
            self.raw.close()
            return
        self.draining = True
        try:
            self.raw.write_eof()  # after what is buffered, i.e. the answer
        except OSError:  # the client is gone already
            self.raw.close()
            return
        self.raw.resume_reading()
        grace = min(DRAIN_GRACE_SECONDS, self.rest.timeout_seconds)
        self._timer = self.loop.call_later(max(self.deadline - time.monotonic(), grace), self.raw.close)

    def shutdown(self) -> None:
        self.stopping = True
        if self.draining:
            self.raw.close()
        else:
            super().shutdown()

    def connection_lost(self, exc) -> None:
        if not self.admitted:
            return
        self._cancel_timer()
        self.rest.protocols.pop(self.client, None)
        self.rest.release(self.host)
        super().connection_lost(exc)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is an OSError in the caller's thread."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)  # a burst of connects waits here rather than being dropped
    except OSError:
        sock.close()
        raise
    return sock


class RestServer:
    """The REST port: uvicorn serving the starlette app on its own thread and event loop.

    `.server_address` is the bound address, `.open_connections` counts the connections being served, and
    `.shutdown()` stops it (in-flight requests get STOP_GRACE_SECONDS)."""

    def __init__(self, core: InferenceCore):
        config = core.config
        self.core, self.timeout_seconds = core, config.rest_timeout_seconds
        self.max_per_client = config.rest_max_connections_per_client
        self.protocols, self._per_client = {}, collections.Counter()  # touched on the event loop only
        self.socket = _listen(config.host, config.rest_port)
        self.server_address = self.socket.getsockname()
        app = Starlette(routes=[Route("/{path:path}", _Api(self))])
        protocol = type("RestProtocol", (_RestProtocol,), {"rest": self})
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            app, host=self.server_address[0], port=self.server_address[1], http=protocol, loop="asyncio",
            ws="none", lifespan="off", interface="asgi3", log_config=None, log_level=logging.WARNING,
            access_log=False, proxy_headers=False, server_header=False,
            # one more than the cap: uvicorn counts the connection asking too
            limit_concurrency=config.rest_max_connections + 1, timeout_keep_alive=config.rest_timeout_seconds,
            timeout_graceful_shutdown=STOP_GRACE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            backlog=LISTEN_BACKLOG))
        self._thread = threading.Thread(target=self._run, name="rest", daemon=True)

    @property
    def open_connections(self) -> int:
        return len(self.uvicorn.server_state.connections)

    def admit(self, host: str) -> Optional[str]:
        """None when a connection from `host` may open (and is counted), else why it may not."""
        if self._per_client[host] >= self.max_per_client:
            return (f"this client already has {self.max_per_client} open REST connections "
                    f"(--rest-max-connections-per-client); retry later")
        self._per_client[host] += 1
        return None

    def release(self, host: str) -> None:
        self._per_client[host] -= 1
        if not self._per_client[host]:
            del self._per_client[host]

    def deadline_of(self, client) -> float:
        """When the request on the connection from `client` (host, port) must have arrived in full."""
        protocol = self.protocols.get(tuple(client) if client else None)
        return protocol.deadline if protocol is not None else time.monotonic() + self.timeout_seconds

    def start(self) -> "RestServer":
        self._thread.start()
        started = time.monotonic()
        while not self.uvicorn.started and self._thread.is_alive() and time.monotonic() - started < 60:
            time.sleep(0.005)
        if not self.uvicorn.started:
            self.shutdown()
            self.server_close()
            raise OSError(0, "the REST server did not start")
        return self

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            await self.uvicorn.serve(sockets=[self.socket])
        finally:
            await asyncio.sleep(0.05)  # requests cancelled after the grace answer 503
            for protocol in list(self.protocols.values()):  # still open: closed now
                protocol.raw.abort()

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        self._thread.join(timeout=STOP_GRACE_SECONDS + 10)

    def server_close(self) -> None:
        self.socket.close()


def start_http(core: InferenceCore) -> RestServer:
    """The REST server on the core's host and REST port, started; `.server_address[1]` is the bound port."""
    return RestServer(core).start()
