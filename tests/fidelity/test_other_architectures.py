"""The importer is general, not fitted to the three fixtures: every registry architecture (ResNet and
RevNet, basic and bottleneck, CIFAR and ImageNet stems) with other widths and class counts imports from an
original-layout checkpoint and computes what the original would. The stand-in for the original here is
`testkit.reference_forward`, an independent implementation of the documented layout and numerics that shares no
code with revnet.models; the first test shows it reproduces the original code's own logits."""
import json

import numpy as np
import pytest
import tensorflow as tf

from revnet.train.experiment import restore_model
from revnet.train.import_weights import import_weights

from testkit.fidelity_helpers import CIFAR_MEAN, CIFAR_MEAN_FLAG, MODELS, fixture_path, read_tensors, write_checkpoint
from testkit.reference_forward import Weights, forward, original_input


def relative_error(ours, reference):
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_the_reference_reproduces_the_original_code(name):
    with open(fixture_path(name, "config.json")) as handle:
        saved = json.load(handle)
    config = saved["config"]
    spec = {"architecture": saved["model_class"], "bottleneck": config["use_bottleneck"],
            "family": "imagenet" if config["init_max_pool"] else "cifar", "units": config["num_residual_units"],
            "filters": config["filters"], "num_classes": config["num_classes"]}
    weights = Weights(read_tensors(name))
    inputs = np.load(fixture_path(name, "inputs.npy"))
    for mode, training in (("eval", False), ("train", True)):
        expected = np.load(fixture_path(name, f"logits_{mode}.npy"))
        assert relative_error(forward(weights, spec, inputs, training), expected) < 1e-5


# registry name -> the original config it stands for (narrowed or widened, other class counts)
SPECS = {
    "resnet-110": dict(architecture="resnet", bottleneck=False, family="cifar", units=(18, 18, 18),
                       filters=(8, 8, 16, 32), num_classes=10),
    "resnet-164": dict(architecture="resnet", bottleneck=True, family="cifar", units=(18, 18, 18),
                       filters=(8, 4, 8, 16), num_classes=100),
    "revnet-38": dict(architecture="revnet", bottleneck=False, family="cifar", units=(3, 3, 3),
                      filters=(64, 64, 128, 224), num_classes=10),
    "revnet-110": dict(architecture="revnet", bottleneck=False, family="cifar", units=(9, 9, 9),
                       filters=(16, 16, 32, 48), num_classes=100),
    "revnet-164": dict(architecture="revnet", bottleneck=True, family="cifar", units=(9, 9, 9),
                       filters=(16, 8, 16, 32), num_classes=10),
    "resnet-50": dict(architecture="resnet", bottleneck=True, family="imagenet", units=(3, 4, 6, 3),
                      filters=(8, 4, 8, 16, 32), num_classes=20),
    "resnet-101": dict(architecture="resnet", bottleneck=True, family="imagenet", units=(3, 4, 23, 3),
                       filters=(4, 4, 8, 16, 32), num_classes=1000),
    "revnet-54": dict(architecture="revnet", bottleneck=True, family="imagenet", units=(2, 2, 3, 2),
                      filters=(8, 8, 16, 32, 52), num_classes=30),
}


def original_checkpoint(spec, prefix, seed):
    """Random original-layout weights for `spec` (plus the optimizer's slots and counters), the images and
    the reference logits with moving and with batch statistics."""
    rng = np.random.default_rng(seed)
    size = 64 if spec["family"] == "imagenet" else 32
    pixels = rng.integers(0, 256, (4, size, size, 3)).astype(np.uint8)
    inputs = original_input(pixels, spec["family"], CIFAR_MEAN)
    weights = Weights(rng=rng)
    logits_eval = forward(weights, spec, inputs, training=False)
    logits_train = forward(Weights(weights.tensors), spec, inputs, training=True)
    tensors = dict(weights.tensors)
    tensors.update({f"Model/Model/{name[len('Model/'):]}/Momentum": np.zeros_like(value)
                    for name, value in weights.tensors.items() if not name.endswith(("ema_mean", "ema_var"))})
    tensors.update({"Model/global_step": np.float32(7), "Train/Model/learn_rate": np.float32(0.001)})
    write_checkpoint(prefix, tensors)
    return pixels, logits_eval, logits_train


@pytest.mark.parametrize("name", list(SPECS))
def test_other_architectures_widths_and_class_counts(tmp_path, name):
    spec = SPECS[name]
    pixels, logits_eval, logits_train = original_checkpoint(spec, str(tmp_path / "original" / "ckpt-7"), seed=len(name))
    workdir = str(tmp_path / "experiments")
    extra = {} if spec["family"] == "imagenet" else {"pixel_mean": CIFAR_MEAN_FLAG}
    report = import_weights(checkpoint=str(tmp_path / "original"), model=name, id="x", workdir=workdir, **extra)
    factor = 4 if spec["bottleneck"] else 1
    assert report["stem_channels"] == spec["filters"][0] and report["num_classes"] == spec["num_classes"]
    assert report["channels_per_stage"] == list(spec["filters"][1:])
    assert report["ignored"]["learning_rate"] == 1 and report["checkpoint"]["global_step"] == 7
    images = tf.constant(pixels, tf.float32)
    model, _, _ = restore_model(workdir, "x")
    assert model.config.stage_output_channels == tuple(factor * f for f in spec["filters"][1:])
    assert relative_error(model(images, training=False), logits_eval) < 1e-4
    for mode in ("reversible", "autodiff"):
        model, _, _ = restore_model(workdir, "x", mode=mode)
        assert relative_error(model(images, training=True), logits_train) < 1e-4, mode


def test_units_per_stage_outside_the_registry(tmp_path):
    """A ResNet-56 (9-9-9 basic units; no registry entry): refused as resnet-32 with a hint, then imported
    with --units 9-9-9."""
    from revnet.common.errors import UserError

    spec = dict(SPECS["resnet-110"], units=(9, 9, 9))
    pixels, logits_eval, logits_train = original_checkpoint(spec, str(tmp_path / "original" / "ckpt-7"), seed=56)
    workdir = str(tmp_path / "experiments")
    with pytest.raises(UserError, match=r"Model/unit_1_5/sub1/bn1/beta is in the checkpoint but not in the model.*"
                                        r"--model resnet-32 --units 9-9-9"):
        import_weights(checkpoint=str(tmp_path / "original"), model="resnet-32", id="x", workdir=workdir,
                       pixel_mean=CIFAR_MEAN_FLAG)
    with pytest.raises(UserError, match="--units must be 3 positive unit counts"):
        import_weights(checkpoint=str(tmp_path / "original"), model="resnet-32", id="x", workdir=workdir,
                       pixel_mean=CIFAR_MEAN_FLAG, units="9-9")
    report = import_weights(checkpoint=str(tmp_path / "original"), model="resnet-32", id="x", workdir=workdir,
                            pixel_mean=CIFAR_MEAN_FLAG, units="9-9-9")
    assert report["units_per_stage"] == [9, 9, 9]
    model, _, _ = restore_model(workdir, "x")
    images = tf.constant(pixels, tf.float32)
    assert relative_error(model(images, training=False), logits_eval) < 1e-4
    assert relative_error(model(images, training=True), logits_train) < 1e-4
