"""Test-session set-up that must run before TensorFlow executes any op."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from revnet.common.devices import configure_cpu_replicas  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests run multi-replica synchronous SGD without GPUs.
configure_cpu_replicas(2)
