"""End to end through the CLI, as a user would run it: import the original's checkpoint, export it, and
the SavedModel's serving_default and the ONNX model, fed the raw uint8 pixels, give the original's
logits; an imported CIFAR model (mean image from --data) fine-tunes with `train --id` and evaluates with
`eval --id`."""
import json
import os

import numpy as np
import pytest
from testkit.cli_runner import run_cli

from testkit.fidelity_helpers import CIFAR_MEAN, assert_logits_match, checkpoint_prefix, raw_pixels

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args, timeout=900):
    return run_cli(*args, timeout=timeout, check=True, quiet_tf=True)


def served_logits(version_dir, pixels):
    import onnxruntime
    import tensorflow as tf

    images = pixels.astype(np.float32)
    saved = tf.saved_model.load(version_dir).signatures["serving_default"](images=tf.constant(images))["logits"]
    session = onnxruntime.InferenceSession(os.path.join(version_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    onnx = dict(zip(names, session.run(None, {"images": images}), strict=True))["logits"]
    return saved.numpy(), onnx


def test_imported_revnet104_exports_and_serves_the_originals_logits(tmp_path):
    workdir, exports = str(tmp_path / "experiments"), str(tmp_path / "exports")
    report = json.loads(cli("import-weights", "--checkpoint", os.path.dirname(checkpoint_prefix("revnet-104-narrow")),
                            "--model", "revnet-104", "--id", "n104", "--workdir", workdir, "--json").stdout)
    assert report["preprocessing"] == "inception" and report["input_normalization"] == "symmetric"
    cli("export", "--id", "n104", "--workdir", workdir, "--output", exports, "--format", "all")
    saved, onnx = served_logits(os.path.join(exports, "n104", "1"), raw_pixels("revnet-104-narrow"))
    assert_logits_match(saved, "revnet-104-narrow", "eval")
    assert_logits_match(onnx, "revnet-104-narrow", "eval")


def test_imported_cifar_model_exports_fine_tunes_and_evaluates(tmp_path):
    from revnet.preprocess.fake_data import write_toy_dataset

    data = str(tmp_path / "data")
    write_toy_dataset(data, num_train=32, num_validation=16, num_classes=10, num_shards=1)
    with open(os.path.join(data, "metadata.json")) as handle:
        metadata = json.load(handle)
    metadata["pixel_mean"] = np.broadcast_to(np.asarray(CIFAR_MEAN), (32, 32, 3)).tolist()  # as preprocess records it
    with open(os.path.join(data, "metadata.json"), "w") as handle:
        json.dump(metadata, handle)
    workdir, exports = str(tmp_path / "experiments"), str(tmp_path / "exports")
    cli("import-weights", "--checkpoint", checkpoint_prefix("revnet-38"), "--model", "revnet-38", "--id", "r38",
        "--workdir", workdir, "--data", data)
    cli("export", "--id", "r38", "--workdir", workdir, "--output", exports, "--format", "all")
    saved, onnx = served_logits(os.path.join(exports, "r38", "1"), raw_pixels("revnet-38"))
    assert_logits_match(saved, "revnet-38", "eval")
    assert_logits_match(onnx, "revnet-38", "eval")

    summary = json.loads(cli("train", "--model", "revnet-38", "--id", "r38", "--workdir", workdir, "--steps", "2",
                             "--batch-size", "8", "--lr", "0.01", "--log-every", "1", "--json").stdout)
    assert summary["start_step"] == 0 and summary["step"] == 2 and summary["status"] == "completed"
    with open(os.path.join(workdir, "r38", "train.log")) as handle:
        assert "resumed from" in handle.read()  # the imported ckpt-0, not a fresh initialisation
    with open(os.path.join(workdir, "r38", "config.json")) as handle:
        assert json.load(handle)["model"]["input_normalization"] == "subtract_mean"
    result = json.loads(cli("eval", "--id", "r38", "--workdir", workdir, "--once", "--json").stdout)
    assert result["examples"] == 16 and 0.0 <= result["top1"] <= 1.0
