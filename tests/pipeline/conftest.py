"""Tiny datasets in the exact official formats, built once per session."""
import os

import numpy as np
import pytest

from revnet.preprocess.sources import cifar
from revnet.preprocess.fake_data import FOLDER_KINDS, jpeg_bytes, folder_pixels, write_folder_tree, write_imagenet_tree

from testkit.preprocess_test_helpers import CIFAR10_NAMES, FOLDER_CLASSES


@pytest.fixture(scope="session")
def cifar10_arrays():
    rng = np.random.default_rng(10)
    return {"train_images": rng.integers(0, 256, (250, 32, 32, 3), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, 250),
            "test_images": rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, 60)}


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory, cifar10_arrays):
    path = str(tmp_path_factory.mktemp("cifar10") / "cifar-10-python.tar.gz")
    a = cifar10_arrays
    return cifar.write_cifar10_archive(path, a["train_images"], a["train_labels"], a["test_images"], a["test_labels"],
                                       CIFAR10_NAMES)


@pytest.fixture(scope="session")
def cifar100_arrays():
    rng = np.random.default_rng(100)
    fine_train, fine_test = rng.integers(0, 100, 120), rng.integers(0, 100, 30)
    return {"train_images": rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), "train_fine": fine_train,
            "train_coarse": fine_train // 5, "test_images": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
            "test_fine": fine_test, "test_coarse": fine_test // 5,
            "fine_names": [f"fine{i}" for i in range(100)], "coarse_names": [f"coarse{i}" for i in range(20)]}


@pytest.fixture(scope="session")
def cifar100_archive(tmp_path_factory, cifar100_arrays):
    path = str(tmp_path_factory.mktemp("cifar100") / "cifar-100-python.tar.gz")
    a = cifar100_arrays
    return cifar.write_cifar100_archive(path, a["train_images"], a["train_fine"], a["train_coarse"], a["test_images"],
                                        a["test_fine"], a["test_coarse"], a["fine_names"], a["coarse_names"])


@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet-folders"))
    return root, write_imagenet_tree(root, num_classes=3, train_per_class=6, val_per_class=2, seed=5)


@pytest.fixture(scope="session")
def imagenet_flat_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet-flat"))
    return root, write_imagenet_tree(root, num_classes=3, train_per_class=2, val_per_class=3, val_layout="flat",
                                     specials=False, seed=6)



@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory):
    """DIR/<class>/[sub/]<image> of every format and mode (32x32, so a size-32 record holds them exactly),
    two large photos of other shapes, and the bad files of a user's disk; returns (root, {relative path:
    info}, {kind of bad file: relative path})."""
    root = str(tmp_path_factory.mktemp("folder-tree"))
    files = write_folder_tree(root, FOLDER_CLASSES, per_class=len(FOLDER_KINDS), kinds=sorted(FOLDER_KINDS), depth=2,
                              seed=3)
    rng = np.random.default_rng(8)
    for name, (height, width) in {"cat/wide.jpg": (90, 300), "dog house/big.jpg": (1100, 1300)}.items():
        with open(f"{root}/{name}", "wb") as handle:
            handle.write(jpeg_bytes(folder_pixels(rng, 0, height, width)))
    bad = {"empty": "cat/empty.jpg", "truncated": "cat/truncated.jpg", "not-an-image": "dog house/notes.png",
           "loop": "dog house/loop.jpg", "skipped": "cat/README.txt", "hidden": "cat/.DS_Store"}
    good = open(f"{root}/" + next(p for p, info in files.items() if info["kind"] == "jpeg"), "rb").read()
    for kind, data in {"empty": b"", "truncated": good[: len(good) // 2], "not-an-image": b"meeting notes",
                       "skipped": b"readme", "hidden": b"\0\0"}.items():
        with open(f"{root}/{bad[kind]}", "wb") as handle:
            handle.write(data)
    os.symlink("loop.jpg", f"{root}/{bad['loop']}")
    return root, files, bad
