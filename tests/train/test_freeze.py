"""`train --freeze`: frozen parts keep their weights and their batch-norm statistics (they run in inference
mode), the rest trains, the gradients of what trains are exact in reversible mode, and a bad part name or a
change on resume is a clear error."""

import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models import build_model, get_config
from revnet.models.parts import parse_freeze, part_names


def _small(name, mode="reversible"):
    return get_config(name, units_per_stage=(2, 2, 2), num_classes=3, param_dtype="float64", mode=mode, seed=3)


def _images(seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (4, 32, 32, 3)), tf.float32)


def _values(model):
    return {variable.name + str(index): variable.numpy().copy() for index, variable in enumerate(model.variables)}


def _part_of(model):
    return {id(variable): module.part for module in model._flatten_modules() for variable in module.params.values()}


@pytest.mark.parametrize("name", ["resnet-32", "revnet-38"])
def test_frozen_parts_keep_weights_and_statistics_and_the_rest_trains(name):
    model = build_model(_small(name))
    model.freeze(parse_freeze("stem,stage1", model.config))
    before = _values(model)
    labels = tf.constant([0, 1, 2, 0])
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(_images(),
                                                                                             training=True)))
        gradients = tape.gradient(loss, model.trained_variables)
        for variable, gradient in zip(model.trained_variables, gradients, strict=True):
            variable.assign_sub(0.1 * gradient)
    parts = _part_of(model)
    trained = {id(v) for v in model.trained_variables}
    for index, variable in enumerate(model.variables):
        unchanged = np.array_equal(before[variable.name + str(index)], variable.numpy())
        if parts[id(variable)] in ("stem", "stage1"):
            assert unchanged and id(variable) not in trained, variable.name   # moving statistics included
        elif "moving" in variable.name or id(variable) in trained:
            assert not unchanged, variable.name


def test_gradients_of_what_trains_are_exact_in_reversible_mode():
    images, labels = _images(1), tf.constant([2, 1, 0, 1])
    gradients = {}
    for mode in ("reversible", "autodiff"):
        model = build_model(_small("revnet-38", mode))
        model.freeze(("stem", "stage2"))   # a frozen stage between trained ones: gradients flow through it
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images,
                                                                                             training=True)))
        gradients[mode] = tape.gradient(loss, model.trained_variables)
        assert len(model.trained_variables) < len(model.trainable_variables)
    for reversible, autodiff in zip(gradients["reversible"], gradients["autodiff"], strict=True):
        assert reversible is not None
        np.testing.assert_allclose(reversible.numpy(), autodiff.numpy(), rtol=0, atol=1e-10)


def test_freeze_names_are_checked_before_tensorflow_work():
    config = get_config("revnet-38")
    assert part_names(config) == ("stem", "stage1", "stage2", "stage3", "head")
    assert parse_freeze("all-but-head", config) == ("stem", "stage1", "stage2", "stage3")
    assert parse_freeze(" stage2 , stem", config) == ("stem", "stage2")
    with pytest.raises(UserError, match="no part 'stage4' in revnet-38; its parts are stem, stage1"):
        parse_freeze("stage4", config)
    with pytest.raises(UserError, match="freezes every part"):
        parse_freeze("all-but-head,head", config)


def test_a_frozen_fine_tuning_run_trains_only_the_head_and_keeps_its_freeze(finished_experiment, tmp_path):
    from revnet.train.experiment import experiment_dir, read_config, resolve_checkpoint
    from revnet.train.trainer import run

    workdir, source_id, _ = finished_experiment
    data = read_config(experiment_dir(workdir, source_id)).data.dir
    summary = run(model="resnet-32", data=data, id="frozen", workdir=workdir, init_from=source_id, steps=3,
                  batch_size=8, freeze="all-but-head", progress=False)
    assert summary["status"] == "completed"
    source = tf.train.load_checkpoint(resolve_checkpoint(experiment_dir(workdir, source_id)))
    tuned = tf.train.load_checkpoint(resolve_checkpoint(experiment_dir(workdir, "frozen")))
    keys = [key for key in source.get_variable_to_shape_map() if key.startswith("model/")
            and key.endswith("VARIABLE_VALUE")]
    head = [key for key in keys if key.startswith("model/head/")]   # its batch norm trains too
    assert head and len(keys) > 20
    for key in keys:
        same = np.array_equal(source.get_tensor(key), tuned.get_tensor(key))
        assert same != (key in head), key
    with pytest.raises(UserError, match="cannot change on resume"):
        run(model="resnet-32", id="frozen", workdir=workdir, freeze="stem", steps=4, progress=False)
