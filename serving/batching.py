"""Server-side dynamic batching: concurrent requests are merged up to `max_batch_size` rows or
`batch_timeout_ms` after the first one arrives, run once, and each caller gets back only its own rows.

A request whose client is gone or late (its `check_alive` raises) is dropped when it is taken from the
queue, before it joins a batch. A batch of one request runs on the caller's array as it is (no copy)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional

import numpy as np

from revnet.serving.outcomes import ServerStopping

log = logging.getLogger(__name__)


class _Item:
    __slots__ = ("servable", "images", "future", "check_alive")

    def __init__(self, servable, images, future, check_alive):
        self.servable, self.images, self.future, self.check_alive = servable, images, future, check_alive

    def abandoned(self) -> bool:
        """True (and the caller told) when the client is gone or late."""
        if self.check_alive is None:
            return False
        try:
            self.check_alive()
        except Exception as error:  # noqa: BLE001 - RequestAbandoned, or whatever the check raised
            self.future.set_exception(error)
            return True
        return False


class DynamicBatcher:
    def __init__(self, max_batch_size: int, batch_timeout_ms: float, on_batch: Callable[[int], None] = None):
        self.max_batch_size = max_batch_size
        self.batch_timeout_seconds = batch_timeout_ms / 1000.0
        self.on_batch = on_batch or (lambda rows: None)
        self._queue: "queue.Queue[_Item]" = queue.Queue()
        self._stopped = threading.Event()
        self._pending = None
        self._thread = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
        self._thread.start()

    def submit(self, servable, images: np.ndarray, check_alive: Optional[Callable[[], None]] = None) -> Future:
        if self._stopped.is_set():
            raise ServerStopping("the server is shutting down")
        future = Future()
        self._queue.put(_Item(servable, images, future, check_alive))
        return future

    def run(self, servable, images: np.ndarray,
            check_alive: Optional[Callable[[], None]] = None) -> Dict[str, np.ndarray]:
        return self.submit(servable, images, check_alive).result()

    def queue_depth(self) -> int:
        """Requests waiting to join a batch (the one held over for the next batch included)."""
        return self._queue.qsize() + (self._pending is not None)

    def stop(self) -> None:
        """Stop the loop; requests still queued fail with ServerStopping rather than wait forever."""
        self._stopped.set()
        self._thread.join(timeout=5)
        left = [self._pending] if self._pending is not None else []
        self._pending = None
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in left:
            item.future.set_exception(ServerStopping("the server is shutting down"))

    def _next(self, timeout):
        if self._pending is not None:
            item, self._pending = self._pending, None
            if not item.abandoned():
                return item
        deadline = time.monotonic() + timeout
        while True:
            item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            if not item.abandoned():
                return item

    def _collect(self) -> List[_Item]:
        first = self._next(timeout=0.1)
        items, rows = [first], len(first.images)
        deadline = time.monotonic() + self.batch_timeout_seconds
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._next(timeout=remaining)
            except queue.Empty:
                break
            # A request that would overflow the batch, or that targets another version (hot reload),
            # starts the next batch instead.
            if rows + len(item.images) > self.max_batch_size or item.servable is not first.servable:
                self._pending = item
                break
            items.append(item)
            rows += len(item.images)
        return items

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                items = self._collect()
            except queue.Empty:
                continue
            sizes = [len(item.images) for item in items]
            try:
                images = items[0].images if len(items) == 1 else np.concatenate([item.images for item in items])
                outputs = items[0].servable.run(images)
            except Exception as error:  # noqa: BLE001 - the callers get the error; the batcher lives on
                for item in items:
                    item.future.set_exception(error)
                continue
            self.on_batch(sum(sizes))
            start = 0
            for item, size in zip(items, sizes, strict=True):
                item.future.set_result({key: value[start:start + size] for key, value in outputs.items()})
                start += size
