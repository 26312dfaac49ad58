"""The model server: gRPC (TF Serving API, health and server reflection) with optional REST/metrics, dynamic
batching, a bounded image decode pool, warm-up and hot reload. Its options and limits are one `ServeConfig`."""
from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
import time
from concurrent import futures
from typing import Optional, Tuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from revnet.common.errors import UserError
from revnet.serving import warmup
from revnet.serving.model_config import ModelEntry, entry_for_model_dir, parse_model_config, read_model_config_text
from revnet.serving.repository import ModelManager, ModelRepository
from revnet.serving.batching import DynamicBatcher
from revnet.serving.grpc_service import add_services
from revnet.serving.request_images import DecodePool
from revnet.serving.inference import InferenceCore
from revnet.serving.serve_config import ServeConfig
from revnet.serving.metrics import Metrics

log = logging.getLogger(__name__)

class ServerHandle:
    """A running server: `.port`, `.rest_port` (None when REST is off), `.models` (the ModelManager), `.stop()`."""

    def __init__(self, grpc_server, grpc_executor, port, http_server, health_servicer, poll_stop, core):
        self.grpc_server, self.grpc_executor, self.port = grpc_server, grpc_executor, port
        self.http_server = http_server
        self.rest_port = http_server.server_address[1] if http_server else None
        self.health, self._poll_stop, self.core = health_servicer, poll_stop, core
        self.models = core.models
        self.batcher, self.decode_pool = core.batcher, core.decode_pool

    @property
    def repository(self) -> ModelRepository:
        """The model's repository, on a server of one model."""
        return self.models.repository("")

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

    def stop(self, grace_seconds: float = 1.0) -> None:
        self._poll_stop.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace_seconds).wait()
        if self.http_server:
            self.http_server.shutdown()
            self.http_server.server_close()
        _stop_workers(self.core)
        self.grpc_executor.shutdown(wait=False, cancel_futures=True)  # grpc.Server.stop leaves it running


def _read(path: Optional[str], what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UserError(f"cannot read {what} {path!r}: {error.strerror}") from None


def start_server(config: Optional[ServeConfig] = None, **options) -> ServerHandle:
    """Start serving in background threads, from a ServeConfig or its fields as keywords (`model_dir=...`).

    Port 0 picks a free port; rest_port -1 (or None) turns REST off. batch_timeout_ms 0 turns dynamic
    batching off (each request runs on its own). A request of more than max_batch_size rows runs as chunks
    of that size; max_request_rows bounds a request.
    """
    if config is None:
        config = ServeConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    metrics = Metrics()
    batcher = (DynamicBatcher(config.max_batch_size, config.batch_timeout_ms, metrics.record_batch)
               if config.batching else None)
    core = InferenceCore(None, config, batcher, metrics, DecodePool(config.decode_workers, config.decode_queue))

    def make_repository(entry, previous):
        return ModelRepository(entry, onnx_file=config.onnx_file, intra_op_threads=config.intra_op_threads,
                               on_load=metrics.record_load, warmup=functools.partial(warmup.replay, core),
                               previous=previous)

    health_servicer = health.HealthServicer()
    try:
        entries, served_text = _entries(config)
        core.models = ModelManager(entries, make_repository)
    except BaseException:
        _stop_workers(core)
        raise
    _track(core.models, metrics, health_servicer)
    if batcher:
        metrics.watch_queue("batch", batcher.queue_depth)
    metrics.watch_queue("decode", lambda: core.decode_pool.in_flight)
    try:
        server, bound, executor = _start_grpc(core, health_servicer)
    except BaseException:
        _stop_workers(core)
        raise
    http_server = None
    if config.rest_enabled:
        from revnet.serving.rest import start_http

        try:
            http_server = start_http(core)
        except OSError as error:
            server.stop(0)
            executor.shutdown(wait=False)
            _stop_workers(core)
            raise UserError(f"cannot bind REST to {config.host}:{config.rest_port}: {error.strerror}") from None
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    poll_stop = threading.Event()
    threading.Thread(target=_poll, args=(core.models, config, poll_stop, served_text), name="version-poll",
                     daemon=True).start()
    handle = ServerHandle(server, executor, bound, http_server, health_servicer, poll_stop, core)
    served = ", ".join(f"{name} {repository.versions()} ({repository.backend})"
                       for name, repository in sorted(core.models.models.items()))
    log.info("serving %s on %s gRPC port %d%s; batching %s", served, config.host, bound,
             f", REST/metrics port {handle.rest_port}" if http_server else "",
             f"up to {config.max_batch_size} rows / {config.batch_timeout_ms:g} ms" if batcher else "off")
    log.debug("server options: %s", config)
    return handle


def _entries(config: ServeConfig) -> Tuple[Tuple[ModelEntry, ...], Optional[str]]:
    """The models to serve, and the text of the model config file they were read from (None without one): the
    version poll compares the file with that text, so a change written at any time after this read counts."""
    if config.model_config_file:
        text = read_model_config_text(config.model_config_file)
        return parse_model_config(text, config.backend, where=config.model_config_file), text
    return (entry_for_model_dir(config.model_dir, config.backend),), None


def _track(models: ModelManager, metrics: Metrics, health_servicer) -> None:
    """Keep the metrics' served set and the per-model health statuses in step with what is served."""
    names = set()

    def update(repositories):
        metrics.set_served({name: repository.versions() for name, repository in repositories.items()})
        for name in names - set(repositories):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        for name in repositories:
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        names.clear()
        names.update(repositories)

    models.listeners.append(update)
    update(models.models)


def _poll(models: ModelManager, config: ServeConfig, stop: threading.Event, served_text: Optional[str]) -> None:
    """Look for new versions every --poll-seconds, and re-read the model config file every
    --model-config-file-poll-wait-seconds (applied when its text changed; a refused one is logged once)."""
    every = config.model_config_file_poll_wait_seconds
    applied = refused = served_text
    next_read = time.monotonic() + every
    while not stop.wait(min(config.poll_seconds, every) if every else config.poll_seconds):
        if every and time.monotonic() >= next_read:
            next_read = time.monotonic() + every
            text = _config_text(config.model_config_file)
            if text is not None and text not in (applied, refused):
                try:
                    models.reload(parse_model_config(text, config.backend, where=config.model_config_file))
                    applied = text
                except UserError as error:
                    refused = text
                    log.error("the changed %s is refused; the previous config keeps serving: %s",
                              config.model_config_file, error)
        models.poll()


def _config_text(path: str) -> Optional[str]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        log.warning("cannot read %s (%s); keeping the config being served", path, error)
        return None


def _refuse_a_port_in_use(address: str) -> None:
    """A clear error before gRPC tries the port (its own failure is raw core text on stderr)."""
    import errno
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gRPC binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use; stop what listens there or choose another "
                                f"--port") from None
            # Anything else (an address not on this machine, a name) is left to gRPC's own bind and message.


def _start_grpc(core, health_servicer):
    config = core.config
    address = f"{config.host}:{config.port}"
    _refuse_a_port_in_use(address)
    max_bytes = config.max_message_mb * 1024 * 1024
    executor = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc")
    server = grpc.server(executor,
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", max_bytes), ("grpc.so_reuseport", 0)])
    services = add_services(server, core)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Reflection lets grpcurl and other generic clients list and call the services without their .proto files.
    services += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)
    if config.tls_cert:
        credentials = grpc.ssl_server_credentials([(_read(config.tls_key, "TLS key"),
                                                    _read(config.tls_cert, "TLS certificate"))])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        executor.shutdown(wait=False)
        raise UserError(f"cannot bind gRPC to {address}; is the port in use?")
    server.start()
    return server, bound, executor


def _stop_workers(core: InferenceCore) -> None:
    if core.batcher:
        core.batcher.stop()
    core.decode_pool.stop()


def serve(config: Optional[ServeConfig] = None, **options) -> None:
    """Run the server until SIGINT/SIGTERM."""
    handle = start_server(config, **options)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print(f"serving on port {handle.port}" + (f", REST on {handle.rest_port}" if handle.rest_port else ""), flush=True)
    # A signal delivered to one of gRPC's threads does not interrupt an untimed wait in this one, and
    # Python runs its handler only here: wake up regularly so the handler gets to run.
    while not stopped.wait(0.25):
        pass
    log.info("shutting down")
    handle.stop()
