"""Helpers for the trainer tests that start the real CLI in subprocesses."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def cli_command(*args):
    return [sys.executable, os.path.join(ROOT, "cli.py"), *args]


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_seconds, what, process=None):
    """Poll `predicate` until true; fail (naming `what`) on timeout or if `process` exits first."""
    import time

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


class ServiceCluster:
    """A tf.data service dispatcher and workers started with `cli.py data-service` on 127.0.0.1 ports."""

    def __init__(self, log_dir, num_workers=2):
        import subprocess

        self.log_dir, self.port = log_dir, free_port()
        os.makedirs(str(log_dir), exist_ok=True)
        self.address = f"grpc://127.0.0.1:{self.port}"
        self.dispatcher = subprocess.Popen(
            cli_command("data-service", "dispatcher", "--port", str(self.port), "--worker-timeout", "2"),
            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=open(self.log_path("dispatcher"), "w"))
        self.worker_ports = [free_port() for _ in range(num_workers)]
        self.workers = [self.start_worker(index) for index in range(num_workers)]
        wait_for(lambda: f"workers registered: {num_workers}" in self.log("dispatcher"), 120,
                 f"{num_workers} workers to register", self.dispatcher)

    def log_path(self, name):
        return os.path.join(str(self.log_dir), f"{name}.log")

    def log(self, name):
        path = self.log_path(name)
        return open(path).read() if os.path.exists(path) else ""

    def start_worker(self, index, attempt=0):
        import subprocess

        return subprocess.Popen(
            cli_command("data-service", "worker", "--dispatcher", f"127.0.0.1:{self.port}",
                        "--port", str(self.worker_ports[index])),
            env=subprocess_env(), stdout=subprocess.DEVNULL,
            stderr=open(self.log_path(f"worker{index}-{attempt}"), "w"))

    def stop(self):
        """SIGTERM every server still running; returns their exit codes (0 = clean shutdown)."""
        codes = []
        for process in self.workers + [self.dispatcher]:
            if process.poll() is None:
                process.terminate()
            try:
                codes.append(process.wait(timeout=30))
            except Exception:  # noqa: BLE001 - never leave a server behind
                process.kill()
                codes.append(process.wait())
        return codes
