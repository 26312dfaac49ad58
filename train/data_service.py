"""The tf.data service (`cli.py data-service dispatcher|worker`, `train --data-service`): the servers and
the address checks.

The dispatcher hands out work; workers run the training input pipeline (decode, augment, batch) and
stream ready batches to the trainer, which may sit on another machine. TensorFlow's tf.data servers
always listen on every interface (`0.0.0.0:PORT`, fixed in TensorFlow's server code, no bind option);
`--host` is the address the servers give to clients, 127.0.0.1 by default, so keep the ports behind a
firewall on a reachable machine. SIGTERM or Ctrl-C stops a server cleanly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from typing import Optional, Tuple

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_DISPATCHER_PORT = 5050
_ADDRESS = re.compile(r"^(?:grpc://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def parse_address(address: str) -> Tuple[str, int]:
    """(host, port) of "grpc://HOST:PORT" or "HOST:PORT", else a UserError."""
    match = _ADDRESS.match(address or "")
    if not match or not 0 < int(match.group("port")) < 65536:
        raise UserError(f"data service address {address!r} is not HOST:PORT or grpc://HOST:PORT "
                        f"(e.g. grpc://127.0.0.1:{DEFAULT_DISPATCHER_PORT})")
    return match.group("host"), int(match.group("port"))


def service_target(address: str) -> str:
    host, port = parse_address(address)
    return f"grpc://{host}:{port}"


def wait_until_reachable(address: str, timeout_seconds: float, what: str = "tf.data service dispatcher") -> None:
    """Return once a gRPC server answers at `address`, or raise a UserError after `timeout_seconds`."""
    import grpc

    host, port = parse_address(address)
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_seconds)
    except grpc.FutureTimeoutError:
        raise UserError(f"no {what} answers at {host}:{port} (waited {timeout_seconds:.0f} s); start one with "
                        f"`python cli.py data-service dispatcher --port {port}`") from None
    finally:
        channel.close()


STOP_TIMEOUT_SECONDS = 10.0


def _serve_until_stopped(server, name: str, on_tick=None) -> None:
    """Block until SIGTERM or SIGINT (main thread) or until the process is killed, then stop `server`."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda number, frame: stop.set())
    try:
        while not stop.wait(1.0):
            if on_tick is not None:
                on_tick()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("%s stopping", name)
        # TensorFlow's stop() waits for the server's task threads; on a loaded machine that was seen to take
        # over 30 s. Wait a bounded time, then leave without it: the process is exiting anyway.
        stopper = threading.Thread(target=server.stop, name=f"{name} stop", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_SECONDS)
        if stopper.is_alive():
            log.warning("%s did not stop within %.0f s; exiting without waiting for it", name, STOP_TIMEOUT_SECONDS)
            logging.shutdown()
            os._exit(0)
        log.info("%s stopped", name)


def _start(server_class, config, port: int, name: str):
    try:
        return server_class(config)
    except Exception as error:  # noqa: BLE001 - TensorFlow raises a bare RuntimeError/UnknownError here
        from revnet.common.errors import error_reason

        raise UserError(f"could not start the tf.data {name} on port {port} ({error_reason(error)}); "
                        f"is the port in use?") from None


def run_dispatcher(port: int = DEFAULT_DISPATCHER_PORT, host: str = "127.0.0.1", work_dir: Optional[str] = None,
                   worker_timeout_seconds: float = 10.0, ready=None) -> None:
    """Run a tf.data service dispatcher until SIGTERM/SIGINT. With `work_dir` it journals its state there and
    a restarted dispatcher resumes its jobs (fault-tolerant mode). `ready(port)` is called once it serves."""
    import tensorflow as tf

    service = tf.data.experimental.service
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
    config = service.DispatcherConfig(port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir),
                                      worker_timeout_ms=int(worker_timeout_seconds * 1000))
    server = _start(service.DispatchServer, config, port, "dispatcher")
    bound_port = int(server.target.rsplit(":", 1)[1])
    log.info("tf.data dispatcher serving: trainers use --data-service grpc://%s:%d, workers --dispatcher %s:%d",
             host, bound_port, host, bound_port)
    log.info("TensorFlow's tf.data servers listen on all interfaces (0.0.0.0:%d); firewall the port if this "
             "machine is reachable from outside", bound_port)
    if work_dir:
        log.info("fault-tolerant mode: journal in %s", os.path.abspath(work_dir))
    if ready is not None:
        ready(bound_port)
    workers = {"count": None}

    def report_workers():
        # TensorFlow keeps the worker count private; the log line is worth the small dependency.
        count = server._num_workers() if hasattr(server, "_num_workers") else None
        if count is not None and count != workers["count"]:
            log.info("workers registered: %d", count)
            workers["count"] = count

    _serve_until_stopped(server, "tf.data dispatcher", report_workers)


def run_worker(dispatcher: str, port: int = 0, host: str = "127.0.0.1", connect_timeout_seconds: float = 60.0,
               ready=None) -> None:
    """Run a tf.data service worker for `dispatcher` ("HOST:PORT") until SIGTERM/SIGINT; `port` 0 picks a free
    port. Waits up to `connect_timeout_seconds` for the dispatcher first."""
    dispatcher_host, dispatcher_port = parse_address(dispatcher)
    wait_until_reachable(dispatcher, connect_timeout_seconds)
    import tensorflow as tf

    service = tf.data.experimental.service
    config = service.WorkerConfig(dispatcher_address=f"{dispatcher_host}:{dispatcher_port}",
                                  worker_address=f"{host}:%port%", port=port)
    server = _start(service.WorkerServer, config, port, "worker")
    bound_port = int(server._address.rsplit(":", 1)[1]) if hasattr(server, "_address") else port  # private, as above
    log.info("tf.data worker %s:%d serving for dispatcher %s:%d (listening on 0.0.0.0:%d)", host, bound_port,
             dispatcher_host, dispatcher_port, bound_port)
    if ready is not None:
        ready(bound_port)
    _serve_until_stopped(server, f"tf.data worker {host}:{bound_port}")


class StallWatchdog:
    """Watches the training calls of a trainer fed by the tf.data service. TensorFlow's client waits
    forever for a worker that died mid-epoch (the dispatcher never hands its share on), so without this a
    lost worker would hang the trainer silently. After `timeout_seconds / 5` inside one call it logs what
    to do; after `timeout_seconds` it calls `on_timeout(seconds)` (the trainer saves and exits)."""

    def __init__(self, service: str, timeout_seconds: float, on_timeout):
        self.service, self.timeout_seconds, self.on_timeout = service, timeout_seconds, on_timeout
        self._call_started: Optional[float] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="data-service-watchdog", daemon=True)

    @contextlib.contextmanager
    def call(self):
        """Around one training call (not the first: tracing and compiling are not stalls)."""
        if not self._thread.is_alive():
            self._thread.start()
        with self._lock:
            self._call_started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._call_started = None

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        warn_every = self.timeout_seconds / 5
        warned = 0
        while not self._stop.wait(min(warn_every, 1.0)):
            with self._lock:
                waited = 0.0 if self._call_started is None else time.monotonic() - self._call_started
            if waited >= self.timeout_seconds:
                self.on_timeout(waited)
                return
            if waited < warn_every:
                warned = 0
            elif waited >= (warned + 1) * warn_every:
                warned += 1
                log.warning("no training batch from the tf.data service %s for %.0f s; if a worker died, restart "
                            "it with the same --host and --port and training continues (its unfinished files of "
                            "this epoch are skipped); the trainer stops after %.0f s", self.service, waited,
                            self.timeout_seconds)
