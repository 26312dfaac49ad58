"""The model server: gRPC (TF Serving API, health and server reflection) with optional REST/metrics, dynamic
batching, a bounded image decode pool, warm-up and hot reload. Its options and limits are one `ServeConfig`."""
from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
from concurrent import futures
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from revnet.common.errors import UserError
from revnet.serving import warmup
from revnet.serving.backends import ModelRepository
from revnet.serving.batching import DynamicBatcher
from revnet.serving.grpc_service import add_services
from revnet.serving.request_images import DecodePool
from revnet.serving.inference import InferenceCore
from revnet.serving.config import ServeConfig
from revnet.serving.metrics import Metrics

log = logging.getLogger(__name__)

class ServerHandle:
    """A running server: `.port`, `.rest_port` (None when REST is off), `.repository`, `.stop()`."""

    def __init__(self, grpc_server, grpc_executor, port, http_server, repository, health_servicer, poll_stop, core):
        self.grpc_server, self.grpc_executor, self.port, self.http_server = grpc_server, grpc_executor, port, http_server
        self.rest_port = http_server.server_address[1] if http_server else None
        self.repository, self.health, self._poll_stop, self.core = repository, health_servicer, poll_stop, core
        self.batcher, self.decode_pool = core.batcher, core.decode_pool

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
    try:
        core.repository = ModelRepository(config.model_dir, config.backend, onnx_file=config.onnx_file,
                                          intra_op_threads=config.intra_op_threads, on_load=metrics.record_load,
                                          warmup=functools.partial(warmup.replay, core))
    except BaseException:
        _stop_workers(core)
        raise
    repository = core.repository
    metrics.set_model(repository.name, repository.current().version)
    repository.listeners.append(lambda servable: metrics.set_model(servable.name, servable.version))
    if batcher:
        metrics.watch_queue("batch", batcher.queue_depth)
    metrics.watch_queue("decode", lambda: core.decode_pool.in_flight)
    health_servicer = health.HealthServicer()
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
    for service in ("", repository.name):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    poll_stop = threading.Event()

    def poll_versions():
        while not poll_stop.wait(config.poll_seconds):
            repository.poll()

    threading.Thread(target=poll_versions, name="version-poll", daemon=True).start()
    handle = ServerHandle(server, executor, bound, http_server, repository, health_servicer, poll_stop, core)
    log.info("serving %r version %d (%s) on %s gRPC port %d%s; batching %s", repository.name,
             repository.current().version, config.backend, config.host, bound,
             f", REST/metrics port {handle.rest_port}" if http_server else "",
             f"up to {config.max_batch_size} rows / {config.batch_timeout_ms:g} ms" if batcher else "off")
    log.debug("server options: %s", config)
    return handle


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
