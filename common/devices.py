"""Device set-up that must happen before TensorFlow runs its first op."""
import logging
import os

log = logging.getLogger(__name__)


def quiet_tensorflow() -> None:
    """Import TensorFlow and probe its devices with the C++ start-up chatter (absl banner, CUDA probes
    on CPU-only machines, which TF_CPP_MIN_LOG_LEVEL does not silence) kept out of the user's stderr.

    Only the import and the device probe run with file descriptor 2 pointed at /dev/null: nothing of
    ours is logged in that window, and everything after it reaches stderr as usual.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sys

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(devnull)


def configure_cpu_replicas(num_replicas: int) -> None:
    """Split the first CPU into `num_replicas` logical devices (no-op if already configured).

    Logical devices can only be set before TF initialises its runtime, so the CLI and
    `conftest.py` call this first thing. A later call asking for a different count fails
    with a clear error instead of TF's RuntimeError.
    """
    import tensorflow as tf

    from revnet.common.errors import UserError

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

