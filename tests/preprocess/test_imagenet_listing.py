"""ILSVRC2012 folder listing and label mapping, for both validation layouts and label-file formats."""
import os

import pytest

from revnet.common.errors import UserError
from revnet.preprocess import imagenet
from revnet.preprocess.fake_data import write_imagenet_tree


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flat"))
    return root, write_imagenet_tree(root, num_classes=3, train_per_class=2, val_per_class=3, val_layout="flat",
                                     specials=False, seed=1)


def test_labels_follow_sorted_synsets_with_offset(flat_tree):
    root, info = flat_tree
    synsets, texts, items = imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"), label_offset=1)
    assert synsets == sorted(info["synsets"])
    assert texts[0] == "class 0, thing 0"
    for item in items["train"]:
        assert item.label == synsets.index(item.synset) + 1
        assert item.source_id.startswith(f"train{os.sep}{item.synset}{os.sep}")
    assert len(items["train"]) == 6


@pytest.mark.parametrize("label_file", ["LOC_val_solution.csv", "val_synsets.txt"])
def test_both_validation_label_formats_give_the_true_labels(flat_tree, label_file):
    root, info = flat_tree
    synsets, _, items = imagenet.list_imagenet(root, os.path.join(root, label_file))
    assert [item.synset for item in items["validation"]] == info["val_synsets"]
    assert [item.label for item in items["validation"]] == [synsets.index(s) for s in info["val_synsets"]]
    assert len(set(info["val_synsets"])) > 1  # the check would be vacuous with one class


def test_bad_validation_labels_are_user_errors(flat_tree, tmp_path):
    root, info = flat_tree
    with pytest.raises(UserError, match="pass --val-labels"):
        imagenet.list_imagenet(root, None)
    short = tmp_path / "short.txt"
    short.write_text("n01440764\n")
    with pytest.raises(UserError, match="has 1 synsets but val/ holds 9 images"):
        imagenet.list_imagenet(root, str(short))
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("n09999999\n" * len(info["val_synsets"]))
    with pytest.raises(UserError, match="n09999999 .* has no training folder"):
        imagenet.list_imagenet(root, str(unknown))
    with pytest.raises(UserError, match="does not exist"):
        imagenet.list_imagenet(root, str(tmp_path / "nope.csv"))


def test_validation_folder_without_training_folder_is_a_user_error(tmp_path):
    root = str(tmp_path)
    write_imagenet_tree(root, num_classes=2, train_per_class=1, val_per_class=1, specials=False)
    os.rename(os.path.join(root, "val", "n01441764"), os.path.join(root, "val", "n04444444"))
    with pytest.raises(UserError, match="validation synset n04444444 .* no training folder"):
        imagenet.list_imagenet(root)
    with pytest.raises(UserError, match="no train/ folder"):
        imagenet.list_imagenet(os.path.join(root, "val"))
