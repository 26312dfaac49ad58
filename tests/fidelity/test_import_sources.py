"""Where a checkpoint can come from (a prefix, one of its files, a folder with a state file, the release
.tar.gz) and where the model's input normalisation and class names come from (--data, --pixel-mean,
--labels)."""
import io
import json
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from revnet.train.experiment import restore_model
from revnet.train.import_weights import import_weights

from testkit.fidelity_helpers import (CIFAR_MEAN, CIFAR_MEAN_FLAG, assert_logits_match, checkpoint_prefix, copy_fixture,
                              fixture_path, raw_pixels, read_tensors)


def imported_stem_kernel(workdir, exp_id):
    model, _, _ = restore_model(workdir, exp_id)
    return model.stem.params["conv/kernel"].numpy()


def import_resnet32(checkpoint, workdir, exp_id="r", **options):
    options.setdefault("pixel_mean", CIFAR_MEAN_FLAG)
    return import_weights(checkpoint=checkpoint, model="resnet-32", id=exp_id, workdir=workdir, **options)


@pytest.fixture(scope="module")
def stem_kernel():
    return read_tensors("resnet-32")["Model/init/init_conv/w"]


def test_prefix_file_and_folder(tmp_path, stem_kernel):
    folder = os.path.dirname(checkpoint_prefix("resnet-32"))
    for index, path in enumerate([checkpoint_prefix("resnet-32"), checkpoint_prefix("resnet-32") + ".index",
                                  checkpoint_prefix("resnet-32") + ".data-00000-of-00001", folder]):
        report = import_resnet32(path, str(tmp_path), exp_id=f"r{index}")
        assert report["checkpoint"]["prefix"] == "ckpt-3" and report["checkpoint"]["global_step"] == 3
        np.testing.assert_array_equal(imported_stem_kernel(str(tmp_path), f"r{index}"), stem_kernel)


def test_report_counts_reconcile(tmp_path):
    report = import_resnet32(checkpoint_prefix("resnet-32"), str(tmp_path))
    with open(fixture_path("resnet-32", "manifest.json")) as handle:
        kinds = [entry["kind"] for entry in json.load(handle)["variables"]]
    mapped, ignored = report["mapped"], report["ignored"]
    assert mapped["weights"] == kinds.count("model_weight")
    assert mapped["moving_statistics"] == kinds.count("bn_moving_stat")
    assert ignored == {"optimizer_slot": kinds.count("optimizer_slot"), "counter": 1, "learning_rate": 1}
    assert mapped["tensors"] + sum(ignored.values()) == report["checkpoint"]["variables"] == len(kinds)
    with open(os.path.join(tmp_path, "r", "import.json")) as handle:
        assert json.load(handle)["mapped"] == mapped


def test_folder_whose_state_file_names_another_machines_path(tmp_path, stem_kernel):
    folder = str(tmp_path / "moved")
    copy_fixture("resnet-32", folder)
    with open(os.path.join(folder, "checkpoint"), "w") as handle:
        handle.write('model_checkpoint_path: "/u/someone/results/resnet-32/ckpt-3"\n')
    import_resnet32(folder, str(tmp_path / "experiments"))
    np.testing.assert_array_equal(imported_stem_kernel(str(tmp_path / "experiments"), "r"), stem_kernel)


def test_folder_with_several_checkpoints_and_no_state_file_is_refused(tmp_path):
    from revnet.common.errors import UserError

    folder = str(tmp_path / "several")
    prefix = copy_fixture("resnet-32", folder)
    os.unlink(os.path.join(folder, "checkpoint"))
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(prefix + suffix, os.path.join(folder, "ckpt-6" + suffix))
    with pytest.raises(UserError, match="holds 2 checkpoints"):
        import_resnet32(folder, str(tmp_path / "experiments"))


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_release_archive(tmp_path, stem_kernel):
    """A release-like .tar.gz: a folder with two checkpoints, the state file naming the later one (by an
    absolute path), a graph file, and members trying to escape; only the named checkpoint is read."""
    archive = str(tmp_path / "resnet-32.tar.gz")
    prefix = checkpoint_prefix("resnet-32")
    older = read_tensors("resnet-32")
    with tarfile.open(archive, "w:gz") as tar:
        for suffix in (".index", ".data-00000-of-00001"):
            tar.add(prefix + suffix, arcname="resnet-32/model.ckpt-600" + suffix)
        from testkit.fidelity_helpers import write_checkpoint

        older["Model/init/init_conv/w"] = older["Model/init/init_conv/w"] * 0.0
        old_prefix = write_checkpoint(str(tmp_path / "old" / "model.ckpt-300"), older)
        for suffix in (".index", ".data-00000-of-00001"):
            tar.add(old_prefix + suffix, arcname="resnet-32/model.ckpt-300" + suffix)
        _add_bytes(tar, "resnet-32/checkpoint", b'model_checkpoint_path: "/ais/gobi5/revnet/model.ckpt-600"\n'
                                                b'all_model_checkpoint_paths: "/ais/gobi5/revnet/model.ckpt-300"\n')
        _add_bytes(tar, "resnet-32/model.ckpt-600.meta", b"graph")
        _add_bytes(tar, "../escaped.txt", b"x")
    report = import_resnet32(archive, str(tmp_path / "experiments"))
    assert report["checkpoint"]["prefix"] == "model.ckpt-600"
    np.testing.assert_array_equal(imported_stem_kernel(str(tmp_path / "experiments"), "r"), stem_kernel)
    assert not os.path.exists(tmp_path.parent / "escaped.txt") and not os.path.exists(tmp_path / "escaped.txt")


def write_dataset_metadata(folder, pixel_mean, num_classes=10, label_names=None):
    """A dataset folder as `preprocess` writes it (metadata only: import reads nothing else)."""
    os.makedirs(folder, exist_ok=True)
    metadata = {"dataset": "cifar-10", "num_classes": num_classes, "complete": True, "synsets": None,
                "label_names": label_names or [f"class {k}" for k in range(num_classes)], "label_offset": 0,
                "splits": {}, "pixel_mean": pixel_mean}
    with open(os.path.join(folder, "metadata.json"), "w") as handle:
        json.dump(metadata, handle)
    return folder


def test_data_folders_per_pixel_mean_is_the_models(tmp_path):
    """--data: the mean image recorded by preprocess ([32][32][3]) is subtracted pixel by pixel."""
    image = np.broadcast_to(np.asarray(CIFAR_MEAN), (32, 32, 3)).tolist()
    data = write_dataset_metadata(str(tmp_path / "data"), image)
    workdir = str(tmp_path / "experiments")
    import_weights(checkpoint=checkpoint_prefix("resnet-32"), model="resnet-32", id="r", workdir=workdir, data=data)
    model, config, _ = restore_model(workdir, "r")
    assert config.model.input_normalization == "subtract_mean" and config.data.dir == data
    assert config.data.label_names[3] == "class 3"
    assert_logits_match(model(tf.constant(raw_pixels("resnet-32"), tf.float32)), "resnet-32", "eval")
    # A mean image that is not constant: each pixel gets its own mean.
    ramp = (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 251).astype(np.float64)
    import_weights(checkpoint=checkpoint_prefix("resnet-32"), model="resnet-32", id="ramp", workdir=workdir,
                   data=write_dataset_metadata(str(tmp_path / "ramp"), ramp.tolist()))
    model, _, _ = restore_model(workdir, "ramp")
    pixels = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3)).astype(np.float32)
    from revnet.models.normalization import normalize

    ours = normalize(tf.constant(pixels), "subtract_mean", model.pixel_mean, model.pixel_std, tf.float32).numpy()
    np.testing.assert_array_equal(ours, pixels - ramp.astype(np.float32))


def test_pixel_mean_flag_wins_over_the_datasets(tmp_path):
    data = write_dataset_metadata(str(tmp_path / "data"), np.full((32, 32, 3), 7.0).tolist())
    workdir = str(tmp_path / "experiments")
    import_weights(checkpoint=checkpoint_prefix("resnet-32"), model="resnet-32", id="r", workdir=workdir, data=data,
                   pixel_mean=CIFAR_MEAN_FLAG)
    _, config, _ = restore_model(workdir, "r")
    assert config.model.pixel_mean == tuple(CIFAR_MEAN) and config.data.dir == data


@pytest.mark.parametrize("metadata_mean, fragment", [
    (None, "records no pixel_mean"),
    ([[1.0, 2.0, 3.0]] * 32, "pixel_mean has shape [32, 3]"),
])
def test_data_folder_without_a_usable_mean_is_refused(tmp_path, metadata_mean, fragment):
    from revnet.common.errors import UserError

    data = write_dataset_metadata(str(tmp_path / "data"), metadata_mean)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        import_weights(checkpoint=checkpoint_prefix("resnet-32"), model="resnet-32", id="r",
                       workdir=str(tmp_path / "experiments"), data=data)
    assert not os.path.exists(tmp_path / "experiments")


def test_data_folder_with_another_class_count_imports_to_fine_tune_from(tmp_path, caplog):
    data = write_dataset_metadata(str(tmp_path / "data"), [1.0, 2.0, 3.0], num_classes=100)
    workdir = str(tmp_path / "experiments")
    with caplog.at_level(logging.WARNING):
        report = import_weights(checkpoint=checkpoint_prefix("resnet-32"), model="resnet-32", id="r",
                                workdir=workdir, data=data)
    assert report["num_classes"] == 10 and "train --init-from r" in caplog.text
    _, config, _ = restore_model(workdir, "r")
    assert config.model.num_classes == 10 and config.data.dir is None and config.data.label_names is None
    assert config.model.pixel_mean == (1.0, 2.0, 3.0)  # the dataset's mean still normalises the inputs


def test_labels_file_names_the_classes(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"name {k}\n" for k in range(10)))
    workdir = str(tmp_path / "experiments")
    import_resnet32(checkpoint_prefix("resnet-32"), workdir, labels=str(labels))
    _, config, _ = restore_model(workdir, "r")
    assert config.data.label_names == tuple(f"name {k}" for k in range(10))


def test_eval_of_an_import_without_data_says_what_is_missing(tmp_path):
    from revnet.common.errors import UserError
    from revnet.train.evaluator import evaluate

    import_resnet32(checkpoint_prefix("resnet-32"), str(tmp_path))
    with pytest.raises(UserError, match="records no dataset to evaluate on; import it with --data"):
        evaluate(id="r", workdir=str(tmp_path), once=True)
