"""`train --init-from`: every weight that fits by name and shape is loaded, the classifier is re-initialised
for a new class count, missing weights keep their initial values, extra source tensors are ignored, a
mismatch outside the classifier stops (unless skipped), and the new experiment trains, evaluates and exports
with its own class names."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models import build_model, get_config
from revnet.train.init_from import checkpoint_keys, init_from


@pytest.fixture(scope="module")
def three_class_data(tmp_path_factory):
    from revnet.preprocess.fake_data import write_toy_dataset

    path = str(tmp_path_factory.mktemp("toy3"))
    write_toy_dataset(path, num_train=48, num_validation=12, num_classes=3, num_shards=1, seed=4)
    return path


def _source_values(workdir, exp_id):
    from revnet.train.experiment import experiment_dir, resolve_checkpoint

    reader = tf.train.load_checkpoint(resolve_checkpoint(experiment_dir(workdir, exp_id)))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if key.startswith("model/")}


def test_fitting_weights_are_loaded_and_the_classifier_is_reinitialised(finished_experiment):
    workdir, exp_id, _ = finished_experiment
    model = build_model("resnet-32", num_classes=3, seed=1)
    fresh = build_model("resnet-32", num_classes=3, seed=1)
    report = init_from(model, exp_id, workdir)
    source = _source_values(workdir, exp_id)
    classifier = {id(v) for v in model.classifier_variables}
    initial = checkpoint_keys(fresh)
    for key, variable in checkpoint_keys(model).items():
        if id(variable) in classifier:
            np.testing.assert_array_equal(variable.numpy(), initial[key].numpy())
        else:
            np.testing.assert_array_equal(variable.numpy(), source[key])
    assert report["counts"] == {"loaded": len(model.variables) - 2, "reinitialized": 2, "kept_initial": 0,
                                "ignored": 0}
    assert {row["name"] for row in report["rows"] if row["action"] == "reinitialized"} == \
        {"head/params/dense/kernel", "head/params/dense/bias"}


def test_missing_weights_keep_their_initial_values_and_extra_ones_are_ignored(finished_experiment):
    workdir, exp_id, _ = finished_experiment
    source = _source_values(workdir, exp_id)
    deeper = build_model(get_config("resnet-32", units_per_stage=(5, 5, 6), num_classes=4))  # one unit more
    report = init_from(deeper, exp_id, workdir)
    extra = [key for key in checkpoint_keys(deeper) if key not in source]
    assert extra and report["counts"] == {"loaded": len(deeper.variables) - len(extra), "reinitialized": 0,
                                          "kept_initial": len(extra), "ignored": 0}
    shallower = build_model(get_config("resnet-32", units_per_stage=(5, 5, 4), num_classes=4))  # one unit less
    report = init_from(shallower, exp_id, workdir)
    unused = [key for key in source if key not in checkpoint_keys(shallower)]
    assert unused and report["counts"] == {"loaded": len(shallower.variables), "reinitialized": 0,
                                           "kept_initial": 0, "ignored": len(unused)}


def test_a_mismatch_outside_the_classifier_stops_unless_skipped(finished_experiment):
    workdir, exp_id, _ = finished_experiment
    wider = get_config("resnet-32", channels_per_stage=(16, 32, 48), num_classes=4)
    with pytest.raises(UserError, match="outside the classifier have other shapes.*--init-skip-mismatched"):
        init_from(build_model(wider), exp_id, workdir)
    report = init_from(build_model(wider), exp_id, workdir, skip_mismatched=True)
    assert report["counts"]["loaded"] > 0 and report["counts"]["reinitialized"] > 2
    with pytest.raises(UserError, match="no weight of the model was found"):
        init_from(build_model("revnet-38", num_classes=3), exp_id, workdir, skip_mismatched=True)
    with pytest.raises(UserError, match="neither an experiment"):
        init_from(build_model("resnet-32", num_classes=4), "no-such-experiment", workdir)


def test_an_original_code_checkpoint_fits_by_its_names(tmp_path):
    from revnet.models.original_names import original_variable_map

    fixture = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "revnet-public", "resnet-32")
    prefix = tf.train.latest_checkpoint(fixture)
    model = build_model("resnet-32", num_classes=3, input_normalization="subtract_mean",
                        pixel_mean=(125.3, 123.0, 113.9))
    report = init_from(model, prefix, str(tmp_path))
    assert report["kind"] == "original" and report["counts"]["reinitialized"] == 2
    reader = tf.train.load_checkpoint(prefix)
    for name, target in original_variable_map(model).items():
        if name.endswith(("logit/w", "logit/b")):
            continue
        value = target.params[target.key].numpy()
        value = value if target.index is None else value[target.index]
        np.testing.assert_array_equal(value, reader.get_tensor(name))
    assert report["counts"]["ignored"] > 0  # the original's momentum slots and counters


@pytest.mark.slow
def test_a_fine_tuned_experiment_trains_evaluates_and_exports_with_its_classes(finished_experiment,
                                                                               three_class_data, tmp_path):
    from revnet.serving.exporter import export
    from revnet.train.evaluator import evaluate
    from revnet.train.trainer import run

    workdir, exp_id, _ = finished_experiment
    summary = run(model="resnet-32", data=three_class_data, id="ft", workdir=workdir, init_from=exp_id, steps=4,
                  batch_size=8, label_smoothing=0.1, progress=False)
    assert summary["status"] == "completed" and summary["step"] == 4
    exp_dir = os.path.join(workdir, "ft")
    saved = json.load(open(os.path.join(exp_dir, "config.json")))
    assert saved["train"]["init_from"] == exp_id and saved["model"]["num_classes"] == 3
    assert (saved["train"]["schedule"], saved["train"]["learning_rate"], saved["train"]["warmup_steps"]) == \
        ("cosine", pytest.approx(0.01), 0)  # 5% of 4 steps rounds to 0
    record = json.load(open(os.path.join(exp_dir, "init_from.json")))
    assert record["counts"]["reinitialized"] == 2 and record["source"] == exp_id
    assert evaluate(id="ft", workdir=workdir, once=True)["examples"] == 12
    exported = export(exp_id="ft", workdir=workdir, output=str(tmp_path / "exports"), format="savedmodel")
    metadata = json.load(open(os.path.join(three_class_data, "metadata.json")))
    assert exported["labels"] == metadata["label_names"] and len(exported["labels"]) == 3
    with pytest.raises(UserError, match="--init-from starts a new experiment"):
        run(model="resnet-32", data=three_class_data, id="ft", workdir=workdir, init_from="other", progress=False)
