"""ILSVRC2012 folder listing and label mapping, for both validation layouts and label-file formats."""
import os

import pytest

from revnet.common.errors import UserError
from revnet.preprocess.sources import imagenet
from revnet.preprocess.fake_data import write_imagenet_tree


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flat"))
    return root, write_imagenet_tree(root, num_classes=3, train_per_class=2, val_per_class=3, val_layout="flat",
                                     specials=False, seed=1)


def test_labels_follow_sorted_synsets_with_offset(flat_tree):
    root, info = flat_tree
    synsets, texts, items, _ = imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"), label_offset=1)
    assert synsets == sorted(info["synsets"])
    assert texts[0] == "class 0, thing 0"
    for item in items["train"]:
        assert item.label == synsets.index(item.synset) + 1
        assert item.source_id.startswith(f"train{os.sep}{item.synset}{os.sep}")
    assert len(items["train"]) == 6


@pytest.mark.parametrize("label_file", ["LOC_val_solution.csv", "val_synsets.txt"])
def test_both_validation_label_formats_give_the_true_labels(flat_tree, label_file):
    root, info = flat_tree
    synsets, _, items, _ = imagenet.list_imagenet(root, os.path.join(root, label_file))
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


def _tree(tmp_path, **kwargs):
    root = str(tmp_path / "tree")
    info = write_imagenet_tree(root, num_classes=3, train_per_class=1, val_per_class=2, val_layout="flat",
                               specials=False, seed=2, **kwargs)
    return root, info


def test_label_files_with_a_byte_order_mark_read_like_plain_ones(tmp_path):
    """Issue 10 item 15: a BOM made the CSV look like the one-synset-per-line format."""
    root, info = _tree(tmp_path)
    for name in ("LOC_val_solution.csv", "val_synsets.txt", "LOC_synset_mapping.txt"):
        path = os.path.join(root, name)
        data = open(path, "rb").read()
        open(path, "wb").write(b"\xef\xbb\xbf" + data)
    listing = imagenet.list_imagenet(root, os.path.join(root, "LOC_val_solution.csv"))
    assert [item.synset for item in listing.items["validation"]] == info["val_synsets"]
    assert listing.texts[0] == "class 0, thing 0"
    listing = imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"))
    assert [item.synset for item in listing.items["validation"]] == info["val_synsets"]


def test_label_and_class_name_files_that_are_not_utf8_are_user_errors(tmp_path):
    root, _ = _tree(tmp_path)
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"--val-labels file .*latin1.csv' is not UTF-8 text .*save it as UTF-8"):
        imagenet.list_imagenet(root, str(bad))
    names = tmp_path / "names.txt"
    names.write_bytes("n01440764 caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"class-name file .*names.txt' is not UTF-8 text"):
        imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"), class_names_file=str(names))


def test_duplicate_image_ids_conflicting_are_errors_identical_are_warnings(tmp_path, caplog):
    """Issue 10 item 14: the last row used to win silently."""
    root, info = _tree(tmp_path)
    csv_path = os.path.join(root, "LOC_val_solution.csv")
    rows = open(csv_path).read().splitlines()
    first_id, first_synset = rows[-1].split(",")[0], rows[-1].split(",")[1].split()[0]
    with open(csv_path, "a") as handle:
        handle.write(rows[-1] + "\n")  # the same row again
    listing = imagenet.list_imagenet(root, csv_path)
    assert [item.synset for item in listing.items["validation"]] == info["val_synsets"]
    assert "repeats 1 ImageId row(s) with the same synset" in caplog.text
    other = next(s for s in info["synsets"] if s != first_synset)
    with open(csv_path, "a") as handle:
        handle.write(f"{first_id},{other} 1 2 3 4\n")
    with pytest.raises(UserError, match=f"labels validation image {first_id} twice, as {first_synset} and {other}"):
        imagenet.list_imagenet(root, csv_path)


def test_names_that_are_not_utf8_become_rejects_not_crashes(tmp_path):
    """Issue 10 item 15: such a name used to crash the job with UnicodeEncodeError."""
    root, info = _tree(tmp_path)
    synset = info["synsets"][0]
    data = open(os.path.join(root, "train", synset, f"{synset}_1.JPEG"), "rb").read()
    bad_file = os.path.join(os.fsencode(root), b"train", os.fsencode(synset), b"caf\xe9.JPEG")
    open(bad_file, "wb").write(data)
    os.makedirs(os.path.join(os.fsencode(root), b"train", b"n0\xff"))
    open(os.path.join(os.fsencode(root), b"train", b"n0\xff", b"x.JPEG"), "wb").write(data)
    listing = imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"))
    assert listing.synsets == info["synsets"]  # the undecodable folder is no class
    assert len(listing.items["train"]) == 3
    assert sorted((r.split, os.path.relpath(r.path, root), r.reason) for r in listing.rejects) == [
        ("train", os.path.join("train", synset, "caf\\xe9.JPEG"), "file name is not valid UTF-8"),
        ("train", os.path.join("train", "n0\\xff", "x.JPEG"), "folder name is not valid UTF-8")]


def test_an_empty_class_folder_is_refused_by_name(tmp_path):
    """Issue 10 item 15: it used to add a class that no example teaches."""
    root, _ = _tree(tmp_path)
    os.makedirs(os.path.join(root, "train", "n09999999"))
    open(os.path.join(root, "train", "n09999999", "notes.txt"), "w").write("not an image")
    with pytest.raises(UserError, match=r"training class folder .*n09999999' holds no images"):
        imagenet.list_imagenet(root, os.path.join(root, "val_synsets.txt"))
