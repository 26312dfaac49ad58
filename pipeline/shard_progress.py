"""Progress of a running job on stderr: shards done out of total, images/s and an ETA.

Every runner's workers leave a summary per finished shard in the work folder (pipeline/shards.py), so
the driver reads progress from there, the same way on the local runner, Dask or Dataflow. On a
terminal the line is redrawn every second; otherwise a log line is written every `log_seconds`.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Dict, Optional

from revnet.pipeline import shards

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ShardProgress:
    """A background thread that polls the finished-shard summaries while the pipeline runs."""

    def __init__(self, work_dir: str, total_shards: int, total_images: int, log_seconds: float = 15.0):
        self.work_dir, self.total_shards, self.total_images = work_dir, total_shards, total_images
        self.terminal = sys.stderr.isatty()
        self.interval = 1.0 if self.terminal else log_seconds
        self.images: Dict[str, int] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="preprocess-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        if exc_info[0] is None:
            self.poll()
            self._show(final=True)
        elif self.terminal:
            sys.stderr.write("\n")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except OSError:
                continue  # a listing that races a writer; the next poll sees it
            self._show(final=False)

    def poll(self) -> None:
        for name in shards.finished_tasks(self.work_dir):
            if name not in self.images:
                self.images[name] = shards.read_summary(self.work_dir, name)["read"]

    def line(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        done = sum(self.images.values())
        rate = done / seconds
        eta = _duration((self.total_images - done) / rate) if rate > 0 else "unknown"
        return (f"preprocess: {len(self.images)}/{self.total_shards} shards, {done}/{self.total_images} images, "
                f"{rate:.0f} images/s, {_duration(seconds)} elapsed, ETA {eta}")

    def _show(self, final: bool) -> None:
        if self.terminal:
            sys.stderr.write("\r" + self.line() + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log.info("%s", self.line())
