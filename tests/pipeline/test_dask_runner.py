"""The pipeline on a real dask.distributed cluster (scheduler + 2 worker processes on 127.0.0.1, no
dashboard): the same bytes as the DirectRunner (CIFAR, ImageNet and folder datasets of both image sizes),
the same rejects, metadata.json last, and a worker
killed mid-job either retried to the same result or failing clearly with nothing published."""
import json
import os
import subprocess
import sys

import pytest

from revnet.pipeline import PreprocessConfig, run_preprocess
from testkit.preprocess_test_helpers import dataset_files, kill_worker_plugin

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR = dict(train_shards=4, val_shards=2, seed=3)
IMAGENET = dict(train_shards=3, val_shards=2, seed=3, max_reject_fraction=0.2)
FOLDER = dict(train_shards=3, val_shards=2, seed=3, max_rejects=4)


def _cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    host="127.0.0.1")


@pytest.fixture(scope="module")
def cluster():
    with _cluster() as running:
        yield running


@pytest.fixture(scope="module")
def direct(tmp_path_factory, cifar10_archive, imagenet_tree, folder_tree):
    root = tmp_path_factory.mktemp("direct")
    for size in (32, 224):
        run_preprocess(PreprocessConfig("folder", str(root / f"folder{size}"), input_path=folder_tree[0],
                                        image_size=size, workers=1, **FOLDER))
    run_preprocess(PreprocessConfig("cifar-10", str(root / "cifar"), input_path=cifar10_archive, workers=1, **CIFAR))
    run_preprocess(PreprocessConfig("imagenet", str(root / "imagenet"), input_path=imagenet_tree[0], workers=1,
                                    **IMAGENET))
    return {name: (str(root / name), json.load(open(root / name / "metadata.json")))
            for name in ("cifar", "imagenet", "folder32", "folder224")}


def _assert_same_dataset(folder, reference):
    reference_dir, reference_metadata = reference
    assert dataset_files(folder) == dataset_files(reference_dir)  # shards and rejects.jsonl, byte for byte
    metadata = json.load(open(os.path.join(folder, "metadata.json")))
    assert metadata["splits"] == reference_metadata["splits"]
    assert metadata["pixel_mean"] == reference_metadata["pixel_mean"]
    # metadata.json is the last file written into the folder.
    mtimes = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
    assert mtimes["metadata.json"] == max(mtimes.values())
    return metadata


def test_cifar_and_imagenet_on_a_dask_cluster_match_the_direct_runner(cluster, direct, cifar10_archive,
                                                                      imagenet_tree, tmp_path):
    address = cluster.scheduler_address
    metadata = run_preprocess(PreprocessConfig("cifar-10", str(tmp_path / "cifar"), input_path=cifar10_archive,
                                               runner="dask", dask_address=address.replace("tcp://", ""), **CIFAR))
    assert metadata["execution"]["runner"] == f"DaskRunner on {address}"
    _assert_same_dataset(str(tmp_path / "cifar"), direct["cifar"])
    metadata = run_preprocess(PreprocessConfig("imagenet", str(tmp_path / "imagenet"), input_path=imagenet_tree[0],
                                               runner="dask", dask_address=address, **IMAGENET))
    assert metadata["splits"]["train"]["rejected"] == 2
    assert metadata["splits"]["train"]["converted"] == {"cmyk": 1, "png": 1, "grayscale": 1}
    _assert_same_dataset(str(tmp_path / "imagenet"), direct["imagenet"])


def test_a_folder_dataset_on_a_dask_cluster_matches_the_direct_runner(cluster, direct, folder_tree, tmp_path):
    for size in (32, 224):
        config = PreprocessConfig("folder", str(tmp_path / f"folder{size}"), input_path=folder_tree[0],
                                  image_size=size, runner="dask", dask_address=cluster.scheduler_address, **FOLDER)
        metadata = run_preprocess(config)
        assert metadata["splits"]["train"]["rejected"] + metadata["splits"]["validation"]["rejected"] == 4
        same = _assert_same_dataset(str(tmp_path / f"folder{size}"), direct[f"folder{size}"])
        assert same["duplicates"] == direct[f"folder{size}"][1]["duplicates"]


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "preprocess", *args], capture_output=True,
                          text=True, timeout=240, cwd=ROOT)


def test_the_plain_beam_form_and_a_local_cluster_from_the_command_line(cluster, direct, cifar10_archive, tmp_path):
    common = ["cifar-10", "--input", cifar10_archive, "--train-shards", "4", "--val-shards", "2", "--seed", "3"]
    beam_form = _cli(*common, "--output", str(tmp_path / "beam"), "--", "--runner=DaskRunner",
                     f"--dask_client_address={cluster.scheduler_address}")
    assert beam_form.returncode == 0, beam_form.stderr[-3000:]
    _assert_same_dataset(str(tmp_path / "beam"), direct["cifar"])
    local = _cli(*common, "--output", str(tmp_path / "local"), "--runner", "dask", "--workers", "2")
    assert local.returncode == 0, local.stderr[-3000:]
    _assert_same_dataset(str(tmp_path / "local"), direct["cifar"])
    assert "started a local Dask cluster of 2 worker process(es) at tcp://127.0.0.1:" in local.stderr
    assert "preprocess: 6/6 shards, 310/310 images" in local.stderr  # the progress line
    assert "Traceback" not in local.stderr


def test_a_worker_killed_mid_job_is_retried_or_fails_clearly(direct, cifar10_archive, tmp_path):
    with _cluster() as running, distributed.Client(running.scheduler_address) as client:
        # Allowed failures (Dask's default, 3): the lost shard task runs again on the other worker.
        client.register_plugin(kill_worker_plugin(str(tmp_path / "killed-1"), after_tasks=1), name="kill-1")
        run_preprocess(PreprocessConfig("cifar-10", str(tmp_path / "retried"), input_path=cifar10_archive,
                                        runner="dask", dask_address=running.scheduler_address, **CIFAR))
        assert (tmp_path / "killed-1").exists()  # a worker really died
        _assert_same_dataset(str(tmp_path / "retried"), direct["cifar"])
        client.unregister_worker_plugin("kill-1")

        # No retries allowed: the job fails with one clear error and nothing is published.
        running.scheduler.allowed_failures = 0
        client.register_plugin(kill_worker_plugin(str(tmp_path / "killed-2"), after_tasks=1), name="kill-2")
        with pytest.raises(RuntimeError, match=r"the Dask job failed \(KilledWorker: .*\); nothing was published"):
            run_preprocess(PreprocessConfig("cifar-10", str(tmp_path / "failed"), input_path=cifar10_archive,
                                            runner="dask", dask_address=running.scheduler_address, **CIFAR))
        assert (tmp_path / "killed-2").exists()
    assert sorted(os.listdir(tmp_path)) == ["killed-1", "killed-2", "retried"]  # no output, no temporary folder
