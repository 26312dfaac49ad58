"""Folders of one's own images through the Beam pipeline: both storage paths, every format, the rejects and
skips, duplicates across splits, split folders with a test split, failures that leave nothing behind."""
import io
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from revnet.common.errors import UserError
from revnet.pipeline import PreprocessConfig, run_preprocess
from revnet.preprocess.fake_data import LOSSY_KINDS, write_folder_tree
from testkit.preprocess_test_helpers import FOLDER_CLASSES, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = sorted(FOLDER_CLASSES)
BAD_FILES = {"empty": "empty file", "truncated": "cannot decode image (JPEG)",
             "not-an-image": "cannot decode image (unknown): cannot identify image file",
             "loop": "symlink loop (Too many levels of symbolic links)"}


def _folder(output, root, **options):
    options = {"workers": 2, "max_rejects": len(BAD_FILES), **options}
    return run_preprocess(PreprocessConfig("folder", str(output), input_path=root, **options))


@pytest.fixture(scope="module")
def size_32(folder_tree, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "folder32"
    return output, _folder(output, folder_tree[0], image_size=32)


@pytest.fixture(scope="module")
def size_224(folder_tree, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "folder224"
    return output, _folder(output, folder_tree[0])


def _all_records(output, metadata):
    return [r for split in metadata["splits"] for r in read_records(str(output), split)]


def test_counts_reconcile_with_every_reject_and_skip_named(size_32, folder_tree):
    output, metadata = size_32
    root, files, bad = folder_tree
    for counts in metadata["splits"].values():
        assert counts["read"] == counts["written"] + counts["rejected"] + counts["skipped"]
    assert sum(c["written"] for c in metadata["splits"].values()) == len(files) + 2  # + wide.jpg and big.jpg
    assert sum(c["skipped"] for c in metadata["splits"].values()) == 2
    assert metadata["skipped"] == {"hidden file": {"count": 1, "examples": [f"{root}/{bad['hidden']}"]},
                                   "not an image file (extension '.txt')":
                                       {"count": 1, "examples": [f"{root}/{bad['skipped']}"]}}
    rejects = {r["path"]: r["reason"] for r in map(json.loads, open(output / "rejects.jsonl"))}
    assert set(rejects) == {f"{root}/{bad[kind]}" for kind in BAD_FILES}
    for kind, reason in BAD_FILES.items():
        assert reason in rejects[f"{root}/{bad[kind]}"], kind
    assert sum(c["rejected"] for c in metadata["splits"].values()) == len(BAD_FILES)


def test_size_32_records_hold_the_pixels_a_viewer_shows_with_labels_in_class_order(size_32, folder_tree):
    output, metadata = size_32
    _, files, _ = folder_tree
    assert metadata["label_names"] == CLASSES and metadata["num_classes"] == 3
    assert {key: metadata[key] for key in ("image_size", "image_format", "model_family", "augmentation",
                                           "preprocessing", "layout", "dataset")} == \
        {"image_size": 32, "image_format": "PNG", "model_family": "cifar", "augmentation": "cifar",
         "preprocessing": "cifar", "layout": "classes", "dataset": "folder"}
    records = _all_records(output, metadata)
    for record in records:
        name = record["image/filename"].decode()
        assert record["image/class/text"].decode() == name.split("/")[0]
        assert record["image/class/label"] == CLASSES.index(name.split("/")[0])
        assert record["image/format"] == b"PNG" and (record["image/height"], record["image/width"]) == (32, 32)
        pixels = np.asarray(Image.open(io.BytesIO(record["image/encoded"])).convert("RGB"), np.float64)
        if name in files:
            error = np.abs(pixels - files[name]["pixels"]).mean()
            assert error <= (3.0 if files[name]["kind"] in LOSSY_KINDS else 0.0), (name, error)
    assert {r["image/filename"].decode() for r in records} >= set(files)
    assert metadata["splits"]["train"]["converted"]["exif-rotated"] >= 1


def test_size_32_records_the_training_pixel_mean(size_32):
    output, metadata = size_32
    train = [np.asarray(Image.open(io.BytesIO(r["image/encoded"])), np.float64)
             for r in read_records(str(output), "train")]
    assert np.asarray(metadata["pixel_mean"]).shape == (32, 32, 3)
    np.testing.assert_allclose(metadata["pixel_mean"], np.mean(train, axis=0), rtol=0, atol=1e-9)
    assert sum(metadata["splits"]["train"]["class_counts"]) == len(train)


def test_default_size_stores_jpegs_for_imagenet_style_models(size_224, folder_tree):
    output, metadata = size_224
    root, files, _ = folder_tree
    assert (metadata["image_size"], metadata["image_format"], metadata["model_family"]) == (224, "JPEG", "imagenet")
    assert metadata["pixel_mean"] is None  # ImageNet-style models normalise with (x/255 - 0.5) * 2
    by_name = {r["image/filename"].decode(): r for r in _all_records(output, metadata)}
    for name, record in by_name.items():
        image = Image.open(io.BytesIO(record["image/encoded"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (record["image/width"], record["image/height"])
        if name in files:
            assert image.size == files[name]["pixels"].shape[1::-1]  # EXIF rotation applied: the shown shape
            if files[name]["kind"] == "jpeg":
                assert record["image/encoded"] == open(os.path.join(root, name), "rb").read()
    assert Image.open(io.BytesIO(by_name["cat/wide.jpg"]["image/encoded"])).size == (300, 90)
    # 1300x1100: both sides over 1024, so stored at half size (both still over 512, twice evaluation's 256).
    assert Image.open(io.BytesIO(by_name["dog house/big.jpg"]["image/encoded"])).size == (650, 550)


def test_the_same_image_in_train_and_validation_is_named(tmp_path, caplog):
    write_folder_tree(str(tmp_path / "tree"), ["a", "b"], split_folders={"train": 4, "val": 2, "test": 1})
    shutil.copy(tmp_path / "tree/train/a/jpeg-0.jpg", tmp_path / "tree/val/b/copy.jpg")
    with caplog.at_level(logging.WARNING):
        metadata = _folder(tmp_path / "out", str(tmp_path / "tree"), image_size=32)
    assert metadata["layout"] == "splits"
    assert metadata["duplicates"] == {"count": 1, "pairs": [[str(tmp_path / "tree/train/a/jpeg-0.jpg"),
                                                              str(tmp_path / "tree/val/b/copy.jpg")]]}
    assert "1 image(s) appear in two splits with the same content" in caplog.text
    assert "tree/val/b/copy.jpg" in caplog.text
    # The test split is a split like the others: its own shards, counts and classes.
    assert [s["file"] for s in metadata["splits"]["test"]["shards"]] == ["test-00000-of-00001.tfrecord"]
    assert metadata["splits"]["test"]["class_counts"] == [1, 1]
    assert {r["image/filename"].decode() for r in read_records(str(tmp_path / "out"), "test")} == \
        {"test/a/jpeg-0.jpg", "test/b/jpeg-0.jpg"}


def test_a_failed_run_leaves_nothing_partial_in_the_output(folder_tree, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(UserError, match=r"inputs rejected, more than the \d+ allowed"):
        _folder(output, folder_tree[0], max_rejects=1)
    assert sorted(os.listdir(tmp_path)) == ["out.rejects.jsonl"]
    one_class = tmp_path / "one"
    write_folder_tree(str(one_class), ["cat"], per_class=3)
    with pytest.raises(UserError, match="holds one class"):
        _folder(output, str(one_class))
    assert sorted(os.listdir(tmp_path)) == ["one", "out.rejects.jsonl"]


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "preprocess", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_the_command_line(folder_tree, tmp_path):
    root = folder_tree[0]
    result = _cli("folder", "--input", root, "--output", str(tmp_path / "out"), "--image-size", "32",
                  "--max-rejects", "4", "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["image_size"] == 32
    # A manifest of images kept anywhere, without --input.
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{root}/{name},{name.split('/')[0]}\n" for name in
                                                 ("cat/wide.jpg", "dog house/big.jpg")), encoding="utf-8")
    result = _cli("folder", "--manifest", str(manifest), "--output", str(tmp_path / "from-manifest"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "folder -> " in result.stdout and "2 classes" in result.stdout
    for args, message in ((["--image-size", "64"], "'64' is not one of '32', '224'"),
                          (["--val-fraction", "1.5"], "1.5 is not in the range 0<=x<=1")):
        result = _cli("folder", "--input", root, "--output", str(tmp_path / "x"), *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = _cli("imagenet", "--input", root, "--output", str(tmp_path / "x"), "--image-size", "32")
    assert result.returncode == 2 and "error: --image-size 32 only applies to folder, not imagenet" in result.stderr
    assert not (tmp_path / "x").exists()


def test_object_store_code_paths_give_the_same_dataset(size_32, folder_tree, tmp_path, monkeypatch):
    """The walk, reads and publishing as done for gs:// (Beam FileSystems: folders are name prefixes, no links
    or special files), exercised on local paths, which FileSystems also serves."""
    from revnet.common import storage

    output, metadata = size_32
    root = str(tmp_path / "tree")
    shutil.copytree(folder_tree[0], root, ignore=shutil.ignore_patterns("loop.jpg"))  # no links on a bucket
    monkeypatch.setattr(storage, "is_remote", lambda path: True)
    again = _folder(tmp_path / "remote", root, image_size=32)
    assert again["label_names"] == metadata["label_names"]
    for split, counts in again["splits"].items():
        assert counts["written"] == metadata["splits"][split]["written"]
        assert [r["image/encoded"] for r in read_records(str(tmp_path / "remote"), split)] == \
            [r["image/encoded"] for r in read_records(str(output), split)]
