"""A folder of one's own images, preprocessed at --image-size 32, trains a CIFAR model from the command line;
a dataset prepared for the other model family is refused with what to do instead."""
import glob
import json
import os

import numpy as np
import pytest
from testkit.cli_runner import run_cli

from revnet.common.errors import UserError
from revnet.models import get_config
from revnet.preprocess.fake_data import write_folder_tree
from revnet.train.input_normalization import training_normalization

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ["cat", "dog house", "Zoë 猫"]


def _cli(*args, timeout=600):
    return run_cli(*args, timeout=timeout)


@pytest.mark.slow  # two command-line runs, one of them importing TensorFlow: about 20 s
def test_a_size_32_folder_dataset_trains_a_cifar_model_end_to_end(tmp_path):
    write_folder_tree(str(tmp_path / "photos"), CLASSES, per_class=8, kinds=("jpeg", "png", "exif-rotated"),
                      size_range=(20, 80), seed=2)
    data = str(tmp_path / "data")
    prepared = _cli("preprocess", "folder", "--input", str(tmp_path / "photos"), "--output", data, "--image-size", "32")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    trained = _cli("train", "--model", "resnet-32", "--data", data, "--steps", "3", "--batch-size", "8",
                   "--workdir", str(tmp_path / "experiments"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "completed at step 3" in trained.stdout
    config = json.load(open(glob.glob(str(tmp_path / "experiments" / "*" / "config.json"))[0], encoding="utf-8"))
    metadata = json.load(open(os.path.join(data, "metadata.json"), encoding="utf-8"))
    assert config["data"]["label_names"] == sorted(CLASSES) == metadata["label_names"]  # on to the export's labels
    assert config["model"]["num_classes"] == 3 and config["train"]["augmentation"] == "cifar"
    assert config["model"]["input_normalization"] == "subtract_mean"  # the CIFAR convention, with the folder's mean
    np.testing.assert_allclose(config["model"]["pixel_mean"], metadata["pixel_mean"])


def test_a_dataset_for_the_other_model_family_is_refused():
    imagenet_style = {"model_family": "imagenet", "image_size": 224, "pixel_mean": None}
    with pytest.raises(UserError, match=r"prepared for imagenet models \(224x224 inputs\) but resnet-32 is a cifar "
                                        r"model \(32x32\); train a model of the imagenet family .* --image-size 32"):
        training_normalization(get_config("resnet-32"), imagenet_style, "photos")
    assert training_normalization(get_config("resnet-50"), imagenet_style, "photos")["input_normalization"] == \
        "symmetric"
    with pytest.raises(UserError, match="re-run `cli.py preprocess` with --image-size 224"):
        training_normalization(get_config("resnet-50"), {"model_family": "cifar", "image_size": 32}, "photos")
