"""Training progress: a one-line bar on a terminal (stderr), plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time
from typing import Dict, Optional

log = logging.getLogger(__name__)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Tracks throughput; `update` returns the logged line's values every `log_every` steps (else None)."""

    def __init__(self, total_steps: int, start_step: int, global_batch_size: int, log_every: int,
                 bar: Optional[bool] = None):
        self.total_steps, self.global_batch_size, self.log_every = total_steps, global_batch_size, log_every
        self.bar = sys.stderr.isatty() if bar is None else bar
        self.start_time = self.window_time = time.perf_counter()
        self.start_step = self.window_step = start_step
        self.last_loss = self.last_accuracy = None
        self.drawn = False

    def examples_per_second(self) -> float:
        done = (self.window_step - self.start_step) * self.global_batch_size
        elapsed = self.window_time - self.start_time
        return done / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, loss: float, accuracy: float) -> Optional[Dict]:
        self.last_loss, self.last_accuracy = loss, accuracy
        now = time.perf_counter()
        due = step % self.log_every == 0 or step == self.total_steps
        rate = (step - self.window_step) * self.global_batch_size / max(now - self.window_time, 1e-9)
        eta = (self.total_steps - step) * self.global_batch_size / rate if rate > 0 else 0.0
        text = (f"step {step}/{self.total_steps} loss {loss:.4f} acc {accuracy:.3f} "
                f"{rate:.1f} ex/s eta {_format_seconds(eta)}")
        if self.bar:
            filled = int(30 * step / max(self.total_steps, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {text}\033[K")
            sys.stderr.flush()
            self.drawn = True
        if not due:
            return None
        if self.bar:
            # The bar is on the terminal; the line still goes to train.log (a handler on the "train" logger).
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, (), None)
            for handler in logging.getLogger("revnet.train").handlers:
                handler.handle(record)
        else:
            log.info(text)
        self.window_time, self.window_step = now, step
        return {"examples_per_second": rate}

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False
