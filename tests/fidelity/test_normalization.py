"""Input normalisation as model config: the three conventions, their validation, old configs, and the
normalisation a new training run gets from its dataset (the original's)."""
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models.normalization import PIXEL_STATS, normalize
from revnet.models.registry import build_model, get_config
from revnet.train.input_normalization import training_normalization

PIXELS = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3)).astype(np.float32)


def network_input(config):
    model = build_model(config)
    return normalize(tf.constant(PIXELS), config.input_normalization, model.pixel_mean, model.pixel_std,
                     tf.float32).numpy()


def test_the_three_conventions():
    mean, std = PIXEL_STATS["cifar"]
    standardized = network_input(get_config("resnet-32"))
    np.testing.assert_allclose(standardized, (PIXELS - 255 * np.float32(mean)) / (255 * np.float32(std)), rtol=1e-6)
    np.testing.assert_array_equal(network_input(get_config("resnet-32", input_normalization="subtract_mean",
                                                           pixel_mean=(100.0, 110.0, 120.0))),
                                  PIXELS - np.float32([100.0, 110.0, 120.0]))
    symmetric = network_input(get_config("resnet-32", input_normalization="symmetric"))
    np.testing.assert_array_equal(symmetric, (PIXELS * np.float32(1 / 255) - np.float32(0.5)) * np.float32(2))
    assert symmetric.min() >= -1 and symmetric.max() <= 1


@pytest.mark.parametrize("overrides, fragment", [
    ({"input_normalization": "whiten"}, "unknown input normalization"),
    ({"input_normalization": "subtract_mean"}, "needs a pixel_mean"),
    ({"input_normalization": "subtract_mean", "pixel_mean": ((1.0, 2.0),)}, "pixel_mean has shape"),
    ({"input_normalization": "symmetric", "pixel_mean": (1.0, 2.0, 3.0)}, "only used by"),
])
def test_inconsistent_fields_are_refused(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        get_config("resnet-32", **overrides)


def test_configs_saved_before_the_field_keep_their_normalisation():
    from revnet.models.registry import model_config_from_json

    saved = get_config("revnet-38").to_json()
    for key in ("input_normalization", "pixel_mean"):
        saved.pop(key)
    config = model_config_from_json(json.loads(json.dumps(saved)))
    assert config.input_normalization == "standardize" and config.pixel_mean is None


def test_config_with_a_mean_image_round_trips_through_json():
    from revnet.models.registry import model_config_from_json

    image = np.random.RandomState(1).uniform(0, 255, (32, 32, 3))
    config = get_config("resnet-32", input_normalization="subtract_mean", pixel_mean=image.tolist())
    again = model_config_from_json(json.loads(json.dumps(config.to_json())))
    assert again == config and hash(again) == hash(config)
    np.testing.assert_array_equal(np.asarray(again.pixel_mean), image)


def test_training_normalization_follows_the_original(caplog):
    image = np.full((32, 32, 3), 120.0).tolist()
    cifar, imagenet = get_config("revnet-38"), get_config("revnet-104")
    assert training_normalization(cifar, {"pixel_mean": image}, "d") == {
        "input_normalization": "subtract_mean", "pixel_mean": get_config(
            "revnet-38", input_normalization="subtract_mean", pixel_mean=image).pixel_mean}
    assert training_normalization(imagenet, {"pixel_mean": None}, "d") == {"input_normalization": "symmetric",
                                                                            "pixel_mean": None}
    with caplog.at_level(logging.WARNING):
        assert training_normalization(cifar, {"image_size": 32}, "d")["input_normalization"] == "standardize"
    assert "re-run `cli.py preprocess`" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        imagenet_layout = {"dataset": "imagenet", "image_size": None, "pixel_mean": None}
        assert training_normalization(cifar, imagenet_layout, "d")["input_normalization"] == "standardize"
    assert "written by an older" not in caplog.text and "imagenet images (of varied sizes)" in caplog.text
    assert "--image-size 32" in caplog.text
    with pytest.raises(UserError, match="d/metadata.json: pixel_mean has shape"):
        training_normalization(cifar, {"pixel_mean": [1.0]}, "d")


def test_a_new_training_run_takes_the_datasets_mean(tmp_path):
    """trainer.resolve_experiment (the one hook): a dataset that records its mean gives the original's convention."""
    from revnet.preprocess.fake_data import write_toy_dataset
    from revnet.train.trainer import resolve_experiment

    data = str(tmp_path / "toy")
    write_toy_dataset(data, num_train=8, num_validation=4, num_classes=4, num_shards=1)
    path = os.path.join(data, "metadata.json")
    with open(path) as handle:
        metadata = json.load(handle)
    metadata["pixel_mean"] = np.full((32, 32, 3), 101.5).tolist()
    with open(path, "w") as handle:
        json.dump(metadata, handle)
    config = resolve_experiment("resnet-32", data, str(tmp_path / "exp"), None, {"steps": 1})
    assert config.model.input_normalization == "subtract_mean"
    assert np.asarray(config.model.pixel_mean).shape == (32, 32, 3)
    # On resume the saved convention is kept whatever the dataset says now.
    metadata.pop("pixel_mean")
    with open(path, "w") as handle:
        json.dump(metadata, handle)
    resumed = resolve_experiment("resnet-32", data, str(tmp_path / "exp"), config, {})
    assert resumed.model.input_normalization == "subtract_mean"
