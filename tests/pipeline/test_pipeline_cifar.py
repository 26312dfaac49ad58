"""CIFAR-10/100 through the Beam pipeline (in-process DirectRunner): counts, schema, exact pixels,
deterministic shuffling, byte-identical re-runs, atomic output."""
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from revnet.common.errors import UserError
from revnet.pipeline import PreprocessConfig, run_preprocess
from revnet.pipeline import run as pipeline_run
from revnet.pipeline.plan import order_key
from revnet.preprocess import schema
from testkit.preprocess_test_helpers import CIFAR10_NAMES, read_records


@pytest.fixture(scope="module")
def cifar10_run(tmp_path_factory, cifar10_archive):
    output = str(tmp_path_factory.mktemp("out") / "cifar10")
    metadata = run_preprocess(PreprocessConfig("cifar-10", output, input_path=cifar10_archive, train_shards=4,
                                               val_shards=2, seed=7, workers=1))
    return output, metadata


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.endswith(".tfrecord")}


def test_counts_reconcile_and_metadata_describes_the_dataset(cifar10_run):
    output, metadata = cifar10_run
    assert metadata == json.load(open(os.path.join(output, "metadata.json")))
    assert schema.load_metadata(output)["complete"] is True
    assert metadata["dataset"] == "cifar-10" and metadata["num_classes"] == 10
    assert metadata["label_names"] == CIFAR10_NAMES and metadata["label_offset"] == 0
    expected = {"train": 250, "validation": 60}
    for split, counts in metadata["splits"].items():
        assert counts["read"] == expected[split]
        assert counts["read"] == counts["written"] + counts["rejected"] and counts["rejected"] == 0
        assert sum(shard["records"] for shard in counts["shards"]) == counts["written"]
        assert len(read_records(output, split)) == counts["written"]
    assert [s["file"] for s in metadata["splits"]["train"]["shards"]] == \
        [f"train-{i:05d}-of-00004.tfrecord" for i in range(4)]
    assert [s["records"] for s in metadata["splits"]["train"]["shards"]] == [63, 62, 63, 62]  # rank r -> r*4//250
    assert metadata["options"]["seed"] == 7 and metadata["splits"]["train"]["converted"] == {}
    assert sorted(os.listdir(output)) == sorted(["metadata.json", "rejects.jsonl"] + list(_files(output)))


def test_records_hold_the_exact_pixels_labels_and_schema(cifar10_run, cifar10_arrays):
    output, _ = cifar10_run
    for split, prefix in (("train", "train"), ("validation", "test")):
        records = read_records(output, split)
        images, labels = cifar10_arrays[f"{prefix}_images"], cifar10_arrays[f"{prefix}_labels"]
        seen = set()
        for record in records:
            # The archive writer names images {prefix}_s_{index}.png, so the filename gives the source row.
            index = int(record["image/filename"].decode().rsplit("_", 1)[1].split(".")[0])
            seen.add(index)
            assert record["image/format"] == b"PNG" and record["image/colorspace"] == b"RGB"
            assert (record["image/height"], record["image/width"], record["image/channels"]) == (32, 32, 3)
            decoded = np.asarray(Image.open(io.BytesIO(record["image/encoded"])))
            np.testing.assert_array_equal(decoded, images[index])
            assert record["image/class/label"] == labels[index]
            assert record["image/class/text"].decode() == CIFAR10_NAMES[labels[index]]
            assert record["image/class/coarse_label"] == -1  # CIFAR-10 has none
        assert seen == set(range(len(images)))


def test_training_examples_are_shuffled_across_shards_and_validation_keeps_order(cifar10_run):
    output, _ = cifar10_run
    train_order = [int(r["image/filename"].decode().rsplit("_", 1)[1][:6]) for r in read_records(output, "train")]
    assert train_order != sorted(train_order)
    first_shard = train_order[:63]
    assert max(first_shard) > 200 and min(first_shard) < 50  # drawn from the whole input, not a contiguous block
    val_order = [int(r["image/filename"].decode().rsplit("_", 1)[1][:6]) for r in read_records(output, "validation")]
    assert val_order == sorted(val_order)


def test_rerun_is_byte_identical_and_extracted_folder_gives_the_same_records(cifar10_run, cifar10_archive, tmp_path):
    output, _ = cifar10_run
    with tarfile.open(cifar10_archive, "r:gz") as handle:
        handle.extractall(tmp_path / "extracted", filter="data")
    again = str(tmp_path / "again")
    run_preprocess(PreprocessConfig("cifar-10", again, input_path=str(tmp_path / "extracted"), train_shards=4,
                                    val_shards=2, seed=7, workers=1))
    assert _files(again) == _files(output)
    # --overwrite replaces a finished dataset in one rename, leaving no sibling folders behind.
    run_preprocess(PreprocessConfig("cifar-10", again, input_path=cifar10_archive, train_shards=4, val_shards=2, seed=8,
                                    workers=1, overwrite=True))
    assert _files(again).keys() == _files(output).keys() and _files(again) != _files(output)
    assert json.load(open(os.path.join(again, "metadata.json")))["options"]["seed"] == 8
    assert sorted(os.listdir(tmp_path)) == ["again", "extracted"]
    other_seed = [order_key(8, "train", f"data_batch_1:{i:06d}") for i in range(50)]
    same_seed = [order_key(7, "train", f"data_batch_1:{i:06d}") for i in range(50)]
    assert np.argsort(other_seed).tolist() != np.argsort(same_seed).tolist()


def test_finished_dataset_is_refused_without_overwrite(cifar10_run, cifar10_archive, tmp_path):
    output, _ = cifar10_run
    before = _files(output)
    with pytest.raises(UserError, match="already holds a finished dataset; pass --overwrite"):
        run_preprocess(PreprocessConfig("cifar-10", output, input_path=cifar10_archive, workers=1))
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not empty and holds no dataset written by preprocess"):
        run_preprocess(PreprocessConfig("cifar-10", str(tmp_path), input_path=cifar10_archive, workers=1))
    assert _files(output) == before


def test_interrupted_job_leaves_no_complete_looking_output(cifar10_archive, tmp_path, monkeypatch):
    collect = pipeline_run._collect

    def crash(*args, **kwargs):
        collect(*args, **kwargs)
        raise KeyboardInterrupt("simulated interrupt after the shards were written")

    monkeypatch.setattr(pipeline_run, "_collect", crash)
    output = tmp_path / "dataset"
    with pytest.raises(KeyboardInterrupt, match="simulated interrupt"):
        run_preprocess(PreprocessConfig("cifar-10", str(output), input_path=cifar10_archive, train_shards=2,
                                        val_shards=1, workers=1))
    assert not output.exists()
    assert os.listdir(tmp_path) == []  # the temporary sibling folder is gone too


def test_cifar100_coarse_labels(cifar100_archive, cifar100_arrays, tmp_path):
    output = str(tmp_path / "c100")
    metadata = run_preprocess(PreprocessConfig("cifar-100", output, input_path=cifar100_archive, label="coarse",
                                               train_shards=2, val_shards=1, workers=1))
    assert metadata["num_classes"] == 20 and metadata["label"] == "coarse"
    assert metadata["label_names"] == cifar100_arrays["coarse_names"]
    assert metadata["coarse_label_names"] == cifar100_arrays["coarse_names"]
    assert (metadata["splits"]["train"]["written"], metadata["splits"]["validation"]["written"]) == (120, 30)
    for record in read_records(output, "validation"):
        index = int(record["image/filename"].decode().rsplit("_", 1)[1][:6])
        assert record["image/class/label"] == cifar100_arrays["test_coarse"][index]
        assert record["image/class/coarse_label"] == cifar100_arrays["test_coarse"][index]
        coarse = cifar100_arrays["test_coarse"][index]
        assert record["image/class/text"].decode() == cifar100_arrays["coarse_names"][coarse]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["image/encoded"]))),
                                      cifar100_arrays["test_images"][index])


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "cifar-10", "label": "coarse"}, "--label coarse only applies to cifar-100, not cifar-10"),
    ({"dataset": "imagenet", "download_dir": "cache"}, "--download-dir cache only applies to cifar-10 and cifar-100"),
    ({"dataset": "cifar-10", "val_labels": "v.csv"}, "--val-labels v.csv only applies to imagenet, not cifar-10"),
    ({"dataset": "cifar-11"}, "unknown dataset 'cifar-11'"),
    ({"dataset": "cifar-100"}, "lacks cifar-100-python/meta"),
    ({"dataset": "imagenet"}, "no train/ folder"),
    ({"dataset": "cifar-10", "beam_args": ["--train-shard", "5"]}, r"unknown option\(s\) \['--train-shard', '5'\]"),
])
def test_wrong_inputs_are_user_errors_with_nothing_left_behind(cifar10_archive, tmp_path, kwargs, message):
    dataset = kwargs.pop("dataset")
    with pytest.raises(UserError, match=message):
        run_preprocess(PreprocessConfig(dataset, str(tmp_path / "out"),
                                        input_path=cifar10_archive if dataset != "imagenet" else str(tmp_path),
                                        workers=1, **kwargs))
    assert not (tmp_path / "out").exists()


def test_pixel_mean_is_the_mean_training_image(cifar10_run, cifar10_arrays, cifar100_archive, cifar100_arrays,
                                               tmp_path):
    """metadata.json's pixel_mean: per pixel and channel, the float64 mean of the raw training pixels."""
    _, metadata = cifar10_run
    expected = cifar10_arrays["train_images"].astype(np.float64).mean(axis=0)
    assert np.asarray(metadata["pixel_mean"]).shape == (32, 32, 3)
    np.testing.assert_allclose(metadata["pixel_mean"], expected, rtol=0, atol=1e-12)
    assert not np.allclose(expected, cifar10_arrays["test_images"].astype(np.float64).mean(axis=0), atol=1)
    c100 = run_preprocess(PreprocessConfig("cifar-100", str(tmp_path / "c100"), input_path=cifar100_archive,
                                           train_shards=3, val_shards=1, workers=2))
    np.testing.assert_allclose(c100["pixel_mean"], cifar100_arrays["train_images"].astype(np.float64).mean(axis=0),
                               rtol=0, atol=1e-12)


def test_overwrite_replaces_only_a_dataset_of_ours(cifar10_run, cifar10_archive, tmp_path):
    """Issue 10 item 10: --overwrite used to delete whatever the folder held."""
    output, _ = cifar10_run
    foreign = tmp_path / "thesis"
    (foreign / "photos").mkdir(parents=True)
    (foreign / "thesis.txt").write_text("four years of work")
    (foreign / "photos" / "a.jpg").write_bytes(b"jpeg")
    refused = r"holds no dataset written by preprocess .*\(--overwrite replaces only a dataset\)"
    with pytest.raises(UserError, match=refused):
        run_preprocess(PreprocessConfig("cifar-10", str(foreign), input_path=cifar10_archive, workers=1,
                                        overwrite=True))
    assert (foreign / "thesis.txt").read_text() == "four years of work" and (foreign / "photos" / "a.jpg").exists()
    # A dataset with something of the user's added to it is refused too, and left as it was.
    mixed = tmp_path / "mixed"
    shutil.copytree(output, mixed)
    (mixed / "notes.txt").write_text("mine")
    before = sorted(os.listdir(mixed))
    with pytest.raises(UserError, match="also 'notes.txt', which preprocess did not write"):
        run_preprocess(PreprocessConfig("cifar-10", str(mixed), input_path=cifar10_archive, workers=1, overwrite=True))
    assert sorted(os.listdir(mixed)) == before
    # An empty folder is fine without --overwrite.
    (tmp_path / "empty").mkdir()
    run_preprocess(PreprocessConfig("cifar-10", str(tmp_path / "empty"), input_path=cifar10_archive, train_shards=2,
                                    val_shards=1, workers=1))
    assert (tmp_path / "empty" / "metadata.json").exists()
