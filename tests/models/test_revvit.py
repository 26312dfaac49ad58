"""RevViT (models/revvit.py): gradient parity of the reversible blocks with their autodiff twin in float64, the
config and registry, freezing, the memory report's rows, and `cli.py train`, `eval` and `export` end to end."""
import json
import os

import numpy as np
import pytest
from testkit.cli_runner import run_cli
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models import build_model, get_config
from revnet.models.registry import model_config_from_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Two blocks, 8 features per stream in 2 heads, 8x8 patches: 16 tokens.
TINY = dict(units_per_stage=(2,), channels_per_stage=(16,), stem_channels=16, num_heads=2, patch_size=8)


def _gradients(model, images, labels):
    """d(mean cross entropy)/d(images, every trainable variable), one training-mode step inside tf.function."""
    @tf.function
    def grads(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, [images] + list(model.trainable_variables))

    return [g.numpy() for g in grads(images)]


@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_float64_gradients_equal_the_autodiff_twin(mode, small_batch):
    images, labels = small_batch
    images = tf.cast(tf.image.resize(images, [32, 32]), tf.float64)
    candidate = build_model("revvit-tiny", mode=mode, param_dtype="float64", seed=3, **TINY)
    reference = build_model("revvit-tiny", mode="autodiff", param_dtype="float64", seed=3, **TINY)
    assert [v.name for v in candidate.variables] == [v.name for v in reference.variables]
    for a, b in zip(candidate.variables, reference.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())   # same seed, same weights, whatever the mode
    got, expected = _gradients(candidate, images, labels), _gradients(reference, images, labels)
    assert len(got) == len(expected) == 1 + len(reference.trainable_variables)
    for variable, g, e in zip(["images"] + [v.name for v in reference.trainable_variables], got, expected, strict=True):
        assert np.linalg.norm(e) > 0, f"{variable} gets no gradient"
        assert np.linalg.norm(g - e) <= 1e-10 * np.linalg.norm(e), variable


def test_the_blocks_rebuild_their_input_and_the_seed_sets_every_weight():
    """The same seed gives the same weights, another seed other kernels, and no two attention kernels are equal."""
    model = build_model("revvit-tiny", param_dtype="float64", seed=1, **TINY)
    images = tf.random.stateless_uniform([2, 32, 32, 3], [4, 5], 0, 255, dtype=tf.float64)
    assert max(model.reconstruction_errors(images)) < 1e-12
    again = build_model("revvit-tiny", param_dtype="float64", seed=1, **TINY)
    for a, b in zip(model.variables, again.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    other = build_model("revvit-tiny", param_dtype="float64", seed=2, **TINY)
    kernels = [(a.name, a.numpy(), b.numpy()) for a, b in zip(model.variables, other.variables, strict=True)
               if "kernel" in a.name]
    assert all(not np.array_equal(a, b) for _, a, b in kernels), "a kernel does not follow the seed"
    attention = model.blocks.blocks[0][0].attention
    query, key, value = (dense.kernel.numpy() for dense in (attention.query_dense, attention.key_dense,
                                                              attention.value_dense))
    assert not np.array_equal(query, key) and not np.array_equal(key, value)


def test_registry_lists_revvit_tiny_and_its_config_round_trips_through_json():
    from revnet.models.summary import model_row

    config = get_config("revvit-tiny")
    assert (config.architecture, config.units_per_stage, config.channels_per_stage) == ("revvit", (12,), (192,))
    assert (config.num_heads, config.patch_size, config.input_size) == (3, 4, 32)
    row = model_row("revvit-tiny")
    assert row["architecture"] == "revvit" and 1e6 < row["params"] < 2e6
    assert model_config_from_json(json.loads(json.dumps(config.to_json()))) == config


def test_configs_saved_before_the_revvit_fields_still_load():
    saved = get_config("revnet-38").to_json()
    del saved["num_heads"], saved["patch_size"]
    assert model_config_from_json(json.loads(json.dumps(saved))) == get_config("revnet-38")


@pytest.mark.parametrize("overrides, message", [
    ({"compute_dtype": "bf16"}, "--mixed-precision is not supported"),
    ({"num_heads": 5}, "num_heads"),
    ({"patch_size": 5}, "patch_size"),
    ({"units_per_stage": (2, 2), "channels_per_stage": (16, 16)}, "one stage"),
])
def test_bad_revvit_configs_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        get_config("revvit-tiny", **overrides)


def test_freezing_the_stem_leaves_its_weights_out_and_cuts_its_gradient():
    model = build_model("revvit-tiny", **TINY)
    model.freeze(["stem"])
    stem = {id(v.value) for v in (model.embedding.position, model.embedding.projection.kernel,
                                  model.embedding.projection.bias)}
    trained = model.trained_variables
    assert len(trained) == len(model.trainable_variables) - 3
    assert all(id(v) not in stem for v in trained)
    images = tf.random.stateless_uniform([2, 32, 32, 3], [1, 1], 0, 255)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True))
    grads = tape.gradient(loss, list(model.trainable_variables))
    assert grads[0] is None and grads[-1] is not None   # the position embedding is the stem's first variable
    # Kernels only: the patch conv, per block the attention's query, key, value and output and the MLP's two, the
    # classifier.
    assert len(model.decay_variables) == 1 + 2 * (4 + 2) + 1


def test_memory_report_compares_a_revvit_reversible_row_with_its_autodiff_twin():
    from revnet.benchmarks.memory_report import format_rows

    def row(mode, units, activation):
        return {"model": "revvit-tiny", "architecture": "revvit", "family": "cifar", "block": "transformer",
                "units_per_stage": [units], "depth": 2 * units + 2, "mode": mode, "precision": "float32",
                "batch_size": 8, "peak_bytes": activation + 10e6, "activation_bytes": activation,
                "activation_bytes_per_image": activation / 7, "step_seconds": 0.1, "grad_rel_err": None,
                "recon_rel_err": None}

    text = format_rows([row("reversible", 4, 10e6), row("autodiff", 4, 20e6), row("reversible", 16, 10e6),
                        row("autodiff", 16, 80e6)])
    assert "revvit-tiny [16] float32 batch 8: reversible/autodiff peak 0.22x, act. 0.12x" in text
    assert "revvit reversible (transformer, float32, batch 8): depth 10 -> 34: peak x1.00, activations x1.00" in text


@pytest.mark.slow   # fresh subprocesses on TF's allocator, as `cli.py benchmark memory` measures
def test_reversible_peak_memory_is_flat_in_depth_while_the_autodiff_twin_grows():
    from revnet.benchmarks.memory import run_worker

    batch, shallow, deep, width = 16, 2, 10, 64
    peak = {}
    for units in (shallow, deep):
        for mode in ("reversible", "autodiff"):
            spec = {"model": "revvit-tiny", "mode": mode, "batch_size": batch, "steps": 1, "check_gradients": False,
                    "overrides": {"units_per_stage": [units], "channels_per_stage": [width], "num_heads": 2,
                                  "num_classes": 4}}
            # activation_bytes: the peak minus the same step's peak at batch 1 (weights, gradients, momentum)
            peak[(units, mode)] = run_worker(spec, timeout_seconds=300)["activation_bytes"]
    slope = {mode: (peak[(deep, mode)] - peak[(shallow, mode)]) / (deep - shallow)
             for mode in ("reversible", "autodiff")}
    stream_bytes = batch * 64 * (width // 2) * 4   # one stream of 64 tokens, float32
    assert slope["autodiff"] >= 4 * stream_bytes, peak          # autodiff stores every block's activations
    assert slope["reversible"] <= 0.1 * slope["autodiff"], peak  # the reversible blocks store none of them


# --- the command line: train, eval, export -----------------------------------------------------------------------
def _cli(*args, timeout=600):
    return run_cli(*args, timeout=timeout, check=True, quiet_tf=True).stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, data dir) after `cli.py train --model revvit-tiny` for 2 steps on a tiny CIFAR-format dataset."""
    from revnet.preprocess.fake_data import write_toy_dataset

    root = tmp_path_factory.mktemp("revvit")
    data, workdir = str(root / "data"), str(root / "experiments")
    write_toy_dataset(data, num_train=32, num_validation=8, num_classes=3, num_shards=1, seed=0)
    _cli("train", "--model", "revvit-tiny", "--data", data, "--id", "vit", "--workdir", workdir, "--steps", "2",
         "--batch-size", "8", "--log-every", "1")
    return workdir, data


def test_train_writes_a_checkpoint_holding_every_trained_weight(trained):
    from revnet.train.experiment import restore_model

    workdir, _ = trained
    model, config, path = restore_model(workdir, "vit")
    assert path.endswith("ckpt-2") and config.model.name == "revvit-tiny" and config.model.num_classes == 3
    initial = build_model(config.model)
    changed = [not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.trainable_variables,
                                                                        initial.trainable_variables, strict=True)]
    assert all(changed), f"{changed.count(False)} weights were not trained or not restored"


def test_eval_and_export_serve_what_the_model_computes(trained, tmp_path):
    from revnet.serving import onnx_export
    from revnet.serving.dataset import read_validation_images
    from revnet.serving.request_images import decode_images_numpy
    from revnet.train.experiment import restore_model

    workdir, data = trained
    result = json.loads(_cli("eval", "--id", "vit", "--workdir", workdir, "--once", "--json"))
    assert result["examples"] == 8 and np.isfinite(result["loss"])
    record = json.loads(_cli("export", "--id", "vit", "--workdir", workdir, "--output", str(tmp_path),
                             "--format", "all", "--json"))
    model, _, _ = restore_model(workdir, "vit")
    encoded, _ = read_validation_images(data, 8)
    images = decode_images_numpy(encoded, 32, "cifar")
    expected = tf.nn.softmax(model(tf.constant(images), training=False)).numpy()
    loaded = tf.saved_model.load(record["path"])
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    by_bytes = loaded.signatures["predict_images"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), expected, atol=1e-5)
    onnx = onnx_export.run(os.path.join(record["path"], "model.onnx"), images)
    np.testing.assert_allclose(onnx["probabilities"], expected, atol=1e-5)
    assert record["onnx"]["ops"]["Loop"] == 0 and record["inference_graph"]["max_abs_probability_diff_vs_model"] < 1e-5
