"""Helpers for the fidelity tests: the original code's reference checkpoints (tests/fixtures/revnet-public,
see its README), importing them, recovering their raw pixels, comparing logits, writing altered copies."""
import os
import shutil

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "revnet-public")
# The fixtures stand in for CIFAR's mean image with these per-channel constants (0..255).
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_MEAN_FLAG = ",".join(map(str, CIFAR_MEAN))
# fixture folder -> the registry architecture it was made from
MODELS = {"resnet-32": "resnet-32", "revnet-38": "revnet-38", "revnet-104-narrow": "revnet-104"}


def fixture_path(name: str, *parts: str) -> str:
    return os.path.join(FIXTURES, name, *parts)


def checkpoint_prefix(name: str) -> str:
    return fixture_path(name, "ckpt-3")


def is_imagenet(name: str) -> bool:
    return name.startswith("revnet-104")


def raw_pixels(name: str) -> np.ndarray:
    """The uint8 pixels behind inputs.npy (which holds them already normalised the original's way)."""
    inputs = np.load(fixture_path(name, "inputs.npy")).astype(np.float64)
    raw = (inputs / 2.0 + 0.5) * 255.0 if is_imagenet(name) else inputs + np.asarray(CIFAR_MEAN)
    pixels = np.round(raw)
    assert np.abs(raw - pixels).max() < 1e-3 and pixels.min() >= 0 and pixels.max() <= 255
    return pixels.astype(np.uint8)


def logits(name: str, which: str) -> np.ndarray:
    return np.load(fixture_path(name, f"logits_{which}.npy"))


def assert_logits_match(ours, name: str, which: str) -> None:
    """Equal within 1e-4 x max|reference| (the eval logits reach 4e6: moving statistics near their init)."""
    reference = logits(name, which)
    ours = np.asarray(ours)
    assert ours.shape == reference.shape
    error = np.abs(ours - reference).max() / np.abs(reference).max()
    assert error < 1e-4, f"{name} {which}: max |ours - original| / max |original| = {error:.3g}"


def import_fixture(name: str, workdir: str, exp_id: str = None, **options):
    from revnet.train.import_weights import import_weights

    if not is_imagenet(name) and "data" not in options:
        options.setdefault("pixel_mean", CIFAR_MEAN_FLAG)
    return import_weights(checkpoint=checkpoint_prefix(name), model=MODELS[name], id=exp_id or name,
                          workdir=workdir, **options)


def read_tensors(name: str):
    """{name: numpy} of every entry in a fixture checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint_prefix(name))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def write_checkpoint(prefix: str, tensors) -> str:
    """A TF1-style name-based checkpoint holding exactly `tensors` ({name: numpy})."""
    import tensorflow as tf

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[key]) for key in names])
    return prefix


def copy_fixture(name: str, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for entry in ("checkpoint", "ckpt-3.index", "ckpt-3.data-00000-of-00001"):
        shutil.copyfile(fixture_path(name, entry), os.path.join(folder, entry))
    return os.path.join(folder, "ckpt-3")
