"""Device set-up that must happen before TensorFlow runs its first op."""
import logging
import os

log = logging.getLogger(__name__)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter (CUDA probes on CPU machines) out of user output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_cpu_replicas(num_replicas: int) -> None:
    """Split the first CPU into `num_replicas` logical devices (no-op if already configured).

    Logical devices can only be set before TF initialises its runtime, so the CLI and
    `conftest.py` call this first thing. A later call asking for a different count fails
    with a clear error instead of TF's RuntimeError.
    """
    import tensorflow as tf

    from common.errors import UserError

    if num_replicas < 1:
        raise UserError(f"--cpu-replicas must be at least 1, got {num_replicas}")
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) >= num_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_replicas)]
        )
    except RuntimeError as error:
        raise UserError(
            f"cannot split the CPU into {num_replicas} logical devices after TensorFlow has started ({error})"
        ) from None


def logical_cpu_names():
    import tensorflow as tf

    return [device.name for device in tf.config.list_logical_devices("CPU")]
