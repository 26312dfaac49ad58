"""Tiny datasets in the exact official formats, built once per session."""
import numpy as np
import pytest

from revnet.preprocess.sources import cifar
from revnet.preprocess.fake_data import write_imagenet_tree

from preprocess_test_helpers import CIFAR10_NAMES


@pytest.fixture(scope="session")
def cifar10_arrays():
    rng = np.random.default_rng(10)
    return {"train_images": rng.integers(0, 256, (250, 32, 32, 3), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, 250), "test_images": rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8),
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
