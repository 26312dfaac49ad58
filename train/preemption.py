"""SIGTERM (preemption) for the trainer.

Before the first training step there is nothing to save, so SIGTERM stops start-up at once with a
`Preempted` exception (the CLI prints one line and exits 143, as after a preemption checkpoint). Once
the loop runs, SIGTERM only sets a flag: the step in flight finishes, a checkpoint is written, and the
run returns with status "preempted".
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Preempted(Exception):
    """SIGTERM arrived before training started; no checkpoint was written."""


def _raise_preempted(signum, frame):
    raise Preempted("stopped by SIGTERM during start-up, before the first training step; "
                    "nothing to save (no checkpoint written)")


def stop_startup_on_sigterm() -> None:
    """Make SIGTERM end start-up cleanly; the CLI calls this before it imports TensorFlow."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_preempted)


class Preemption:
    """`requested` becomes True on SIGTERM once `training_started()` was called; before that SIGTERM
    raises `Preempted`."""

    def __init__(self):
        self.requested = False
        self._in_loop = False

    def training_started(self) -> None:
        self._in_loop = True

    def _handle(self, signum, frame):
        if not self._in_loop:
            _raise_preempted(signum, frame)
        self.requested = True


@contextlib.contextmanager
def watch_sigterm():
    """A `Preemption` whose handler is installed for the duration (main thread only; elsewhere the
    flag simply never rises)."""
    preemption = Preemption()
    if threading.current_thread() is not threading.main_thread():
        yield preemption
        return
    previous = signal.signal(signal.SIGTERM, preemption._handle)
    try:
        yield preemption
    finally:
        signal.signal(signal.SIGTERM, previous)
