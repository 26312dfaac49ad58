"""Dynamic batching: requests are merged, and every caller gets exactly its own rows back."""
import threading

import numpy as np

from revnet.serving.batching import DynamicBatcher


class RecordingServable:
    """Returns each row's own identity so a mix-up between requests is visible."""

    def __init__(self):
        self.batch_sizes = []
        self.lock = threading.Lock()

    def run(self, images):
        with self.lock:
            self.batch_sizes.append(len(images))
        ids = images[:, 0, 0, 0].astype(np.int64)
        return {"classes": ids, "logits": images.reshape(len(images), -1)[:, :2] * 2}


def test_requests_are_merged_up_to_the_limit_and_split_back():
    servable = RecordingServable()
    batcher = DynamicBatcher(max_batch_size=4, batch_timeout_ms=2000, on_batch=lambda rows: None)
    try:
        sizes = [1, 2, 1, 3, 1, 1]  # 9 rows: the limit of 4 must split them into several batches
        requests, next_id = [], 0
        for size in sizes:
            images = np.zeros((size, 2, 2, 3), np.float32)
            images[:, 0, 0, 0] = np.arange(next_id, next_id + size)
            next_id += size
            requests.append((images, batcher.submit(servable, images)))
        for images, future in requests:
            result = future.result(timeout=60)
            np.testing.assert_array_equal(result["classes"], images[:, 0, 0, 0].astype(np.int64))
            np.testing.assert_array_equal(result["logits"], images.reshape(len(images), -1)[:, :2] * 2)
        assert sum(servable.batch_sizes) == 9
        assert max(servable.batch_sizes) > 1 and max(servable.batch_sizes) <= 4
        assert len(servable.batch_sizes) < len(sizes)
    finally:
        batcher.stop()


def test_a_failing_batch_fails_only_its_callers_and_the_batcher_lives_on():
    class Flaky(RecordingServable):
        def run(self, images):
            if (images < 0).any():
                raise ValueError("boom")
            return super().run(images)

    servable = Flaky()
    batcher = DynamicBatcher(max_batch_size=8, batch_timeout_ms=1, on_batch=lambda rows: None)
    try:
        bad = batcher.submit(servable, -np.ones((1, 2, 2, 3), np.float32))
        assert isinstance(bad.exception(timeout=60), ValueError)
        good = batcher.run(servable, np.full((1, 2, 2, 3), 7, np.float32))
        assert good["classes"].tolist() == [7]
    finally:
        batcher.stop()
