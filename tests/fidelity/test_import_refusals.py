"""Checkpoints that do not fit are refused through the CLI: exit 2, one line naming the first variable
that does not fit, and nothing left behind (no experiment folder, no workdir, no temporary folder)."""
import glob
import os
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

from revnet.cli import cli

from testkit.fidelity_helpers import (CIFAR_MEAN_FLAG, checkpoint_prefix, copy_fixture, import_fixture, read_tensors,
                              write_checkpoint)


def import_cli(checkpoint, model, workdir, *extra):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "revnet-import-*")))
    arguments = ["import-weights", "--checkpoint", checkpoint, "--model", model, "--workdir", workdir, *extra]
    result = CliRunner().invoke(cli, arguments + ([] if "--id" in extra else ["--id", "x"]))
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "revnet-import-*"))) == before
    return result


def assert_refused(result, workdir, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not os.path.exists(workdir), os.listdir(workdir)


def altered(tmp_path, change):
    tensors = read_tensors("resnet-32")
    change(tensors)
    return write_checkpoint(str(tmp_path / "altered" / "ckpt-3"), tensors)


def test_another_architectures_checkpoint(tmp_path):
    workdir = str(tmp_path / "experiments")
    result = import_cli(checkpoint_prefix("revnet-38"), "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG)
    assert_refused(result, workdir, "Model/unit_1_0/sub1/conv1/w is missing", "RevNet with basic units 3-3-3",
                   "--model revnet-38")
    # An ImageNet-stem checkpoint given a CIFAR architecture with the same kind of units.
    result = import_cli(checkpoint_prefix("revnet-104-narrow"), "revnet-164", workdir, "--pixel-mean", CIFAR_MEAN_FLAG)
    assert_refused(result, workdir, "Model/init/init_conv/w has shape [7, 7, 3, 8] but the model expects [3, 3, 3, 8]")
    # The same family and block, other units per stage.
    result = import_cli(checkpoint_prefix("revnet-38"), "revnet-110", workdir, "--pixel-mean", CIFAR_MEAN_FLAG)
    assert_refused(result, workdir, "Model/unit_1_3/f/sub1/bn1/gamma is missing")


def test_missing_variable(tmp_path):
    prefix = altered(tmp_path, lambda t: t.pop("Model/unit_2_3/sub2/bn2/ema_var"))
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(prefix, "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG), workdir,
                   "Model/unit_2_3/sub2/bn2/ema_var is missing from the checkpoint")


def test_unexpected_variable(tmp_path):
    def add(tensors):
        tensors["Model/unit_3_5/sub1/conv1/w"] = tensors["Model/unit_3_4/sub1/conv1/w"]
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(altered(tmp_path, add), "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG), workdir,
                   "Model/unit_3_5/sub1/conv1/w is in the checkpoint but not in the model")


def test_shape_mismatch(tmp_path):
    def narrow(tensors):
        name = "Model/unit_3_1/sub1/conv1/w"
        tensors[name] = tensors[name][..., :63]
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(altered(tmp_path, narrow), "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG),
                   workdir, "Model/unit_3_1/sub1/conv1/w has shape [3, 3, 64, 63] but the model expects [3, 3, 64, 64]")


def test_truncated_data_file(tmp_path):
    prefix = copy_fixture("resnet-32", str(tmp_path / "copy"))
    data_file = prefix + ".data-00000-of-00001"
    with open(data_file, "r+b") as handle:
        handle.truncate(os.path.getsize(data_file) // 2)
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(prefix, "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG), workdir,
                   "truncated or corrupt")


def test_truncated_release_archive(tmp_path):
    import tarfile

    archive = str(tmp_path / "resnet-32.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.dirname(checkpoint_prefix("resnet-32")), arcname="resnet-32")
    with open(archive, "r+b") as handle:
        handle.truncate(os.path.getsize(archive) // 2)
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(archive, "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG), workdir,
                   "cannot read archive", "is it complete?")


def test_non_float_weight(tmp_path):
    def as_int(tensors):
        tensors["Model/logit/b"] = tensors["Model/logit/b"].astype(np.int32)
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(altered(tmp_path, as_int), "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG),
                   workdir, "Model/logit/b has dtype int32")


def test_this_projects_own_checkpoint_is_refused(tmp_path):
    import tensorflow as tf

    prefix = tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(tmp_path / "ours" / "ckpt"))
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(prefix, "resnet-32", workdir, "--pixel-mean", CIFAR_MEAN_FLAG), workdir,
                   "object-based TF2 checkpoint")


@pytest.mark.parametrize("extra, fragment", [
    ([], "needs the training images' mean"),
    (["--pixel-mean", "1,2"], "three comma-separated numbers"),
    (["--pixel-mean", "1,2,300"], "within 0..255"),
    (["--pixel-mean", CIFAR_MEAN_FLAG, "--data", "somewhere"], "does not exist"),
    (["--pixel-mean", CIFAR_MEAN_FLAG, "--id", "../elsewhere"], "plain folder name"),
    (["--pixel-mean", CIFAR_MEAN_FLAG, "--preprocessing", "sideways"], "Invalid value for '--preprocessing'"),
])
def test_bad_options(tmp_path, extra, fragment):
    workdir = str(tmp_path / "experiments")
    result = import_cli(checkpoint_prefix("resnet-32"), "resnet-32", workdir, *extra)
    assert result.exit_code == 2 and fragment in result.output + result.stderr
    assert not os.path.exists(workdir)


def test_imagenet_refuses_a_pixel_mean_and_a_wrong_label_count(tmp_path):
    workdir = str(tmp_path / "experiments")
    assert_refused(import_cli(checkpoint_prefix("revnet-104-narrow"), "revnet-104", workdir, "--pixel-mean", "1,2,3"),
                   workdir, "applies only to CIFAR models")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {k}" for k in range(999)) + "\n")
    assert_refused(import_cli(checkpoint_prefix("revnet-104-narrow"), "revnet-104", workdir, "--labels", str(labels)),
                   workdir, "has 999 lines", "1000 classes")


def test_an_existing_experiment_is_never_imported_over(tmp_path):
    workdir = str(tmp_path / "experiments")
    import_fixture("resnet-32", workdir, exp_id="x")
    config = os.path.join(workdir, "x", "config.json")
    before = open(config).read()
    result = import_cli(checkpoint_prefix("revnet-38"), "revnet-38", workdir, "--pixel-mean", CIFAR_MEAN_FLAG)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert open(config).read() == before and sorted(os.listdir(workdir)) == ["x"]
