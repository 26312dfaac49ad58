"""ImageNet through the Beam pipeline: conversions, rejects, counts, label mapping for both layouts."""
import io
import json
import os
import shutil

import pytest
from PIL import Image

from revnet.common.errors import UserError
from revnet.pipeline import PreprocessConfig, run_preprocess
from testkit.preprocess_test_helpers import read_records


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory, imagenet_tree):
    root, info = imagenet_tree
    output = str(tmp_path_factory.mktemp("out") / "imagenet")
    metadata = run_preprocess(PreprocessConfig("imagenet", output, input_path=root, train_shards=3, val_shards=2,
                                               workers=1, max_reject_fraction=0.2))
    return root, info, output, metadata


def test_counts_reconcile_and_bad_files_are_listed_as_rejects(imagenet_run):
    root, info, output, metadata = imagenet_run
    train, validation = metadata["splits"]["train"], metadata["splits"]["validation"]
    assert (train["read"], train["written"], train["rejected"]) == (info["train_files"], info["train_files"] - 2, 2)
    assert (validation["read"], validation["written"], validation["rejected"]) == (6, 6, 0)
    for counts in (train, validation):
        assert counts["read"] == counts["written"] + counts["rejected"]
        assert sum(s["records"] for s in counts["shards"]) == counts["written"]
    assert train["converted"] == {"cmyk": 1, "png": 1, "grayscale": 1}
    rejects = [json.loads(line) for line in open(os.path.join(output, "rejects.jsonl"))]
    by_path = {r["path"]: r for r in rejects}
    assert set(by_path) == {info["specials"]["truncated"], info["specials"]["empty"]}
    assert by_path[info["specials"]["empty"]]["reason"] == "empty file"
    assert "truncated" in by_path[info["specials"]["truncated"]]["reason"]
    assert {r["split"] for r in rejects} == {"train"}


def test_records_have_the_imagenet_schema_and_labels(imagenet_run):
    root, info, output, metadata = imagenet_run
    synsets = metadata["synsets"]
    assert synsets == info["synsets"] and metadata["num_classes"] == 3
    assert metadata["label_names"] == [f"class {i}, thing {i}" for i in range(3)]
    records = read_records(output, "train") + read_records(output, "validation")
    by_name = {r["image/filename"].decode(): r for r in records}
    for record in records:
        synset = record["image/class/synset"].decode()
        assert record["image/class/label"] == synsets.index(synset)
        assert record["image/class/text"].decode() == metadata["label_names"][synsets.index(synset)]
        assert record["image/format"] == b"JPEG" and record["image/channels"] == 3
        image = Image.open(io.BytesIO(record["image/encoded"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (record["image/width"], record["image/height"])
    # A valid RGB JPEG is stored as it is; converted files keep their names and are now RGB JPEGs.
    plain = os.path.join(root, "train", synsets[1], f"{synsets[1]}_1.JPEG")
    assert by_name[os.path.basename(plain)]["image/encoded"] == open(plain, "rb").read()
    for kind in ("cmyk", "png", "grayscale"):
        assert os.path.basename(info["specials"][kind]) in by_name
    for kind in ("truncated", "empty"):
        assert os.path.basename(info["specials"][kind]) not in by_name


def test_too_many_rejects_fail_keeping_their_list_beside_the_output(imagenet_tree, tmp_path):
    root, info = imagenet_tree
    output = tmp_path / "imagenet"
    with pytest.raises(UserError) as failure:
        run_preprocess(PreprocessConfig("imagenet", str(output), input_path=root, max_rejects=1, workers=1))
    message = str(failure.value)
    assert message.startswith("train: 2 of 23 inputs rejected, more than the 1 allowed (the larger of --max-rejects 1 "
                              "and --max-reject-fraction 0.01 of 23); most often (1x) ")
    assert f"all 2 are listed in {output}.rejects.jsonl" in message
    assert message.endswith("raise --max-rejects or --max-reject-fraction to accept them")
    assert not output.exists()
    kept = [json.loads(line) for line in open(f"{output}.rejects.jsonl")]
    assert sorted(r["path"] for r in kept) == sorted([info["specials"]["truncated"], info["specials"]["empty"]])
    assert sorted(os.listdir(tmp_path)) == ["imagenet.rejects.jsonl"]
    # The next run that succeeds publishes the dataset with its own rejects.jsonl; the stale list goes.
    run_preprocess(PreprocessConfig("imagenet", str(output), input_path=root, workers=1))
    assert sorted(os.listdir(tmp_path)) == ["imagenet"]


def test_a_file_of_the_users_beside_the_output_is_never_touched(imagenet_tree, tmp_path):
    root, _ = imagenet_tree
    output = tmp_path / "imagenet"
    beside = tmp_path / "imagenet.rejects.jsonl"
    beside.write_text("my own notes\n")
    with pytest.raises(UserError, match=r"imagenet.rejects.jsonl exists and was not written by preprocess, so the "
                                        r"list was not saved"):
        run_preprocess(PreprocessConfig("imagenet", str(output), input_path=root, max_rejects=0, workers=1))
    run_preprocess(PreprocessConfig("imagenet", str(output), input_path=root, workers=1))
    assert beside.read_text() == "my own notes\n"


def test_small_data_gets_few_shards_and_a_few_rejects_pass(imagenet_tree, tmp_path):
    """121 images used to become 1024 + 128 shard files, and 2 broken ones failed the run."""
    root, info = imagenet_tree
    metadata = run_preprocess(PreprocessConfig("imagenet", str(tmp_path / "out"), input_path=root, workers=1))
    assert [len(metadata["splits"][split]["shards"]) for split in ("train", "validation")] == [1, 1]
    assert metadata["options"]["train_shards"] == 1 and metadata["options"]["val_shards"] == 1
    assert metadata["splits"]["train"]["rejected"] == 2 <= metadata["options"]["max_rejects"]


@pytest.mark.parametrize("label_file", ["LOC_val_solution.csv", "val_synsets.txt"])
def test_flat_validation_with_either_label_file_and_label_offset(imagenet_flat_tree, tmp_path, label_file):
    root, info = imagenet_flat_tree
    output = str(tmp_path / "flat")
    metadata = run_preprocess(PreprocessConfig("imagenet", output, input_path=root,
                                               val_labels=os.path.join(root, label_file), label_offset=1,
                                               train_shards=2, val_shards=2, workers=1))
    assert metadata["label_offset"] == 1 and metadata["num_classes"] == 3
    records = read_records(output, "validation")
    assert [r["image/filename"].decode() for r in records] == \
        [f"ILSVRC2012_val_{n + 1:08d}.JPEG" for n in range(len(info["val_synsets"]))]
    assert [r["image/class/synset"].decode() for r in records] == info["val_synsets"]
    assert [r["image/class/label"] for r in records] == [info["synsets"].index(s) + 1 for s in info["val_synsets"]]
    assert all(1 <= r["image/class/label"] <= 3 for r in read_records(output, "train"))


def test_object_store_code_paths_give_the_same_dataset(imagenet_run, tmp_path, monkeypatch):
    """Listing, scratch files and publishing as done for gs:// (Beam FileSystems, no directory rename),
    exercised on local paths, which FileSystems also serves."""
    from revnet.common import storage

    root, _, output, metadata = imagenet_run
    monkeypatch.setattr(storage, "is_remote", lambda path: True)
    remote_output = str(tmp_path / "remote")
    again = run_preprocess(PreprocessConfig("imagenet", remote_output, input_path=root, train_shards=3, val_shards=2,
                                            workers=1, max_reject_fraction=0.2))
    assert again["splits"] == metadata["splits"]
    shards = sorted(n for n in os.listdir(output) if n.endswith(".tfrecord"))
    assert sorted(n for n in os.listdir(remote_output) if n.endswith(".tfrecord")) == shards
    for name in shards:
        assert open(os.path.join(remote_output, name), "rb").read() == open(os.path.join(output, name), "rb").read()
    assert json.load(open(os.path.join(remote_output, "metadata.json")))["complete"] is True
    # Replacing it goes through the per-file path too, and leaves only the new dataset.
    run_preprocess(PreprocessConfig("imagenet", remote_output, input_path=root, train_shards=2, val_shards=1, workers=1,
                                    max_reject_fraction=0.2, overwrite=True))
    assert sorted(os.listdir(remote_output)) == ["metadata.json", "rejects.jsonl", "train-00000-of-00002.tfrecord",
                                                 "train-00001-of-00002.tfrecord", "validation-00000-of-00001.tfrecord"]


def test_a_name_that_is_not_utf8_is_a_reject_not_a_crash(imagenet_tree, tmp_path):
    """Issue 10 item 15: the job used to fail with UnicodeEncodeError writing the record's file name."""
    root = str(tmp_path / "tree")
    shutil.copytree(imagenet_tree[0], root)
    synset = imagenet_tree[1]["synsets"][0]
    good = open(os.path.join(root, "train", synset, f"{synset}_1.JPEG"), "rb").read()
    open(os.path.join(os.fsencode(root), b"train", os.fsencode(synset), b"caf\xe9.JPEG"), "wb").write(good)
    metadata = run_preprocess(PreprocessConfig("imagenet", str(tmp_path / "out"), input_path=root, train_shards=2,
                                               val_shards=1, workers=1, max_reject_fraction=0.5))
    assert metadata["splits"]["train"]["rejected"] == 3 and metadata["pixel_mean"] is None
    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl")]
    assert {"path": os.path.join(root, "train", synset, "caf\\xe9.JPEG"), "split": "train",
            "reason": "file name is not valid UTF-8"} in rejects


@pytest.mark.timeout(120)  # a FIFO used to block its reader forever: fail, never hang
def test_special_files_and_symlink_loops_are_rejects_not_hangs(imagenet_tree, tmp_path, monkeypatch):
    """Rough-edges issue: a FIFO named *.JPEG hung the run; a self-referencing symlink aborted it with
    `OSError: [Errno 40] Too many levels of symbolic links`."""
    import socket

    root = str(tmp_path / "tree")
    shutil.copytree(imagenet_tree[0], root)
    folder = os.path.join(root, "train", imagenet_tree[1]["synsets"][0])
    os.mkfifo(os.path.join(folder, "fifo.JPEG"))
    os.symlink("loop.JPEG", os.path.join(folder, "loop.JPEG"))
    os.symlink(os.devnull, os.path.join(folder, "device.JPEG"))
    monkeypatch.chdir(folder)  # a socket's path is limited to about 100 bytes
    server = socket.socket(socket.AF_UNIX)
    server.bind("socket.JPEG")
    try:
        metadata = run_preprocess(PreprocessConfig("imagenet", str(tmp_path / "out"), input_path=root, train_shards=2,
                                                   val_shards=1, workers=2, max_reject_fraction=0.5))
    finally:
        server.close()
    reasons = {os.path.basename(r["path"]): r["reason"]
               for r in map(json.loads, open(tmp_path / "out" / "rejects.jsonl"))}
    assert reasons["fifo.JPEG"] == "not a regular file (a FIFO)"
    assert reasons["socket.JPEG"] == "not a regular file (a socket)"
    assert reasons["device.JPEG"] == "not a regular file (a character device)"
    assert "Too many levels of symbolic links" in reasons["loop.JPEG"]
    train = metadata["splits"]["train"]
    assert train["rejected"] == 2 + 4 and train["read"] == train["written"] + train["rejected"]
