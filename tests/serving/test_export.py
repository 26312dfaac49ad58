"""Export: TF-Serving layout, both signatures loaded back, warm-up records, ONNX parity, refusals."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError


def test_layout_and_record(serving_env):
    version_dir = os.path.join(serving_env["model_dir"], "1")
    for name in ("saved_model.pb", "variables", "assets/labels.txt", "assets.extra/tf_serving_warmup_requests",
                 "model.onnx", "labels.txt", "export.json"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    assert open(os.path.join(version_dir, "assets/labels.txt")).read().split() == ["cat", "dog", "ship"]
    record = serving_env["record"]
    assert record["version"] == 1 and record["parity_images"]["source"].startswith("validation:")
    assert not [e for e in os.listdir(serving_env["model_dir"]) if e.startswith(".")]  # no staging left over


def test_both_signatures_load_back_and_match_the_inference_model(serving_env):
    loaded = tf.saved_model.load(os.path.join(serving_env["model_dir"], "1"))
    assert set(loaded.signatures) == {"serving_default", "predict_images"}
    from revnet.serving.request_images import decode_images_numpy

    images = decode_images_numpy(serving_env["encoded"], 32, "cifar")
    expected = tf.nn.softmax(serving_env["model"](tf.constant(images), training=False)).numpy()
    by_images = loaded.signatures["serving_default"](images=tf.constant(images))
    by_bytes = loaded.signatures["predict_images"](image_bytes=tf.constant(serving_env["encoded"]))
    np.testing.assert_allclose(by_images["probabilities"].numpy(), expected, atol=1e-5)
    assert by_images["classes"].dtype == tf.int64
    np.testing.assert_array_equal(by_images["classes"].numpy(), expected.argmax(-1))
    png_rows = slice(0, None, 2)  # PNG decodes identically everywhere; JPEG decoders may differ slightly
    np.testing.assert_allclose(by_bytes["probabilities"].numpy()[png_rows], expected[png_rows], atol=1e-5)
    # Inference mode: the moving BN statistics differ from batch statistics, so training=True must disagree.
    # (A separately restored copy: training=True updates the moving statistics.)
    from revnet.train.experiment import restore_model

    copy, _, _ = restore_model(serving_env["workdir"], "exp1")
    training_probs = tf.nn.softmax(copy(tf.constant(images), training=True)).numpy()
    assert np.abs(training_probs - expected).max() > 1e-3


def test_signature_defs_as_saved_model_cli_shows_them(serving_env):
    from tensorflow.python.tools import saved_model_utils

    meta = saved_model_utils.get_meta_graph_def(os.path.join(serving_env["model_dir"], "1"), "serve")
    defs = meta.signature_def
    assert set(defs) >= {"serving_default", "predict_images"}
    assert list(defs["serving_default"].inputs) == ["images"]
    assert [d.size for d in defs["serving_default"].inputs["images"].tensor_shape.dim] == [-1, 32, 32, 3]
    assert list(defs["predict_images"].inputs) == ["image_bytes"]
    for name in ("serving_default", "predict_images"):
        assert set(defs[name].outputs) == {"probabilities", "classes", "logits"}


def test_warmup_records_are_prediction_logs(serving_env):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(serving_env["model_dir"], "1", "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    signatures = {log.predict_log.request.model_spec.signature_name for log in logs}
    assert len(logs) >= 2 and signatures == {"serving_default", "predict_images"}


def _onnx_outputs(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images}), strict=True))


def test_recorded_parity_is_recomputed_from_the_artefacts_on_disk(serving_env):
    """export.json's parity figures, recomputed from what was published: the SavedModel and model.onnx,
    on the same validation images, and the ONNX model against the model's own (loop) inference."""
    from revnet.serving.dataset import read_validation_images
    from revnet.serving.request_images import decode_images_numpy

    version_dir = os.path.join(serving_env["model_dir"], "1")
    with open(os.path.join(version_dir, "export.json")) as handle:
        record = json.load(handle)
    source = record["parity_images"]
    encoded, _ = read_validation_images(source["source"].split(":", 1)[1], source["count"])
    assert len(encoded) == source["count"] == 8
    images = decode_images_numpy(encoded, record["input_size"], record["preprocessing"])
    tf_probs = tf.saved_model.load(version_dir).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    onnx_probs = _onnx_outputs(os.path.join(version_dir, "model.onnx"), images)["probabilities"]
    recomputed = float(np.abs(onnx_probs - tf_probs).max())
    assert recomputed <= record["onnx"]["tolerance"] == 1e-4
    np.testing.assert_allclose(recomputed, record["onnx"]["max_abs_probability_diff"], rtol=0.05, atol=2e-8)
    model_probs = tf.nn.softmax(serving_env["model"](tf.constant(images), training=False)).numpy()
    np.testing.assert_allclose(onnx_probs, model_probs, atol=1e-4)
    np.testing.assert_allclose(float(np.abs(tf_probs - model_probs).max()),
                               record["inference_graph"]["max_abs_probability_diff_vs_model"], rtol=0.05, atol=2e-8)
    optimized = _onnx_outputs(os.path.join(version_dir, record["onnx"]["optimized"]["file"]), images)["probabilities"]
    np.testing.assert_allclose(optimized, onnx_probs, atol=1e-5)


def test_onnx_graph_is_unrolled_nchw_and_folded(serving_env):
    import onnx

    path = os.path.join(serving_env["model_dir"], "1", "model.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    ops = [node.op_type for node in proto.graph.node]
    assert "Loop" not in ops and "BatchNormalization" not in ops
    assert ops.count("Transpose") == 1 and proto.graph.node[0].op_type == "Transpose"  # the NHWC input only
    # revnet-38: the stem + 3 stages x 3 units x (F, G) x 2 convs, with every post-conv BN folded in; plus
    # the 18 pre-activation BNs (each F and G but the first, and the head's) as depthwise 1x1 convs.
    assert ops.count("Conv") == 1 + 3 * 3 * 2 * 2 + 18 and ops.count("Mul") == 0
    assert serving_env["record"]["onnx"]["ops"]["Transpose"] == 1
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    images = np.random.RandomState(5).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    got = _onnx_outputs(path, images)
    expected = tf.nn.softmax(serving_env["model"](tf.constant(images), training=False)).numpy()
    assert np.abs(got["probabilities"] - expected).max() <= 1e-4
    assert got["classes"].dtype == np.int64


def test_existing_version_refuses_without_overwrite(serving_env):
    from revnet.serving.exporter import export

    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export(exp_id="exp1", workdir=serving_env["workdir"], output=serving_env["output"], format="onnx",
               name="revnet", version=1)


def test_cli_export_errors_are_one_line(serving_env):
    from click.testing import CliRunner

    from revnet.cli import cli

    result = CliRunner().invoke(cli, ["export", "--id", "exp1", "--workdir", serving_env["workdir"], "--output",
                                      serving_env["output"], "--name", "revnet", "--version", "1"])
    assert result.exit_code == 2 and "already exists" in result.output
    result = CliRunner().invoke(cli, ["export", "--id", "missing", "--workdir", serving_env["workdir"],
                                      "--output", "x"])
    assert result.exit_code == 2 and "no experiment 'missing'" in result.output


def test_parity_failure_stops_the_export(serving_env, monkeypatch, tmp_path):
    import revnet.serving.exporter as export_module

    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(UserError, match="disagree"):
        export_module.export(exp_id="exp1", workdir=serving_env["workdir"], output=str(tmp_path), format="onnx",
                             name="broken")
    assert os.listdir(tmp_path / "broken") == []  # nothing published, staging removed


def test_int8_export_records_what_its_artefacts_show(serving_env, tmp_path):
    """Static int8: QDQ ops in model.int8.onnx, and the recorded agreement and accuracy recomputed from disk."""
    from revnet.serving.exporter import export
    from revnet.serving.dataset import read_image_set

    record = export(exp_id="exp1", workdir=serving_env["workdir"], output=str(tmp_path), format="onnx", name="q",
                    quantize="int8")
    int8 = record["onnx"]["int8"]
    # The fixture dataset has no training split: calibration falls back to random images and says so.
    assert int8["calibration_images"]["source"] == "random"
    assert int8["evaluation_images"] == {"source": f"validation:{serving_env['data_dir']}", "count": 8}
    assert int8["ops"]["QuantizeLinear"] > 0 and int8["ops"]["DequantizeLinear"] > 0 and int8["ops"]["Loop"] == 0
    assert int8["images_per_s_int8"] > 0
    assert int8["speedup"] == round(int8["images_per_s_int8"] / int8["images_per_s_float"], 2)
    version_dir = os.path.join(str(tmp_path), "q", "1")
    assert os.path.exists(os.path.join(version_dir, "model.int8.optimized.onnx"))
    evaluation = read_image_set(serving_env["data_dir"], "validation", 8, 32, "cifar")
    float_classes = _onnx_outputs(os.path.join(version_dir, "model.onnx"), evaluation.images)["classes"]
    int8_classes = _onnx_outputs(os.path.join(version_dir, "model.int8.onnx"), evaluation.images)["classes"]
    assert int8["top1_agreement_with_float"] == float(np.mean(int8_classes == float_classes))
    assert int8["accuracy_int8"] == float(np.mean(int8_classes == evaluation.labels))
    assert int8["accuracy_change"] == int8["accuracy_int8"] - int8["accuracy_float"]
