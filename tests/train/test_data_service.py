"""The tf.data service path: a dispatcher and 2 workers from `cli.py data-service` on 127.0.0.1; every
training record exactly once per epoch (also after a resume mid-epoch); the trainer trains through them;
a worker killed mid-run either comes back (training continues) or the trainer saves and stops with a
clear message after --data-service-timeout."""
import io
import os
import signal
import subprocess

import numpy as np
import pytest

from revnet.common.errors import UserError
from testkit.trainer_testing import ServiceCluster, cli_command, subprocess_env, wait_for

pytestmark = pytest.mark.slow  # real server subprocesses; `-m "not slow"` skips them

NUM_RECORDS, NUM_SHARDS = 48, 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    servers = ServiceCluster(tmp_path_factory.mktemp("service"))
    yield servers
    assert servers.stop() == [0, 0, 0], "SIGTERM should stop every server cleanly"
    assert "tf.data dispatcher stopped" in servers.log("dispatcher")


@pytest.fixture(scope="module")
def numbered_data(tmp_path_factory):
    """Training records whose image is one flat colour encoding the record's number: the centre pixel
    survives CIFAR augmentation (pad 4, crop, flip), so a batch tells which records it holds."""
    import tensorflow as tf
    from PIL import Image

    from revnet.common.fileio import atomic_write_json
    from revnet.preprocess import schema

    path = str(tmp_path_factory.mktemp("numbered"))
    shards = []
    for shard in range(NUM_SHARDS):
        name = schema.shard_name("train", shard, NUM_SHARDS)
        numbers = range(shard, NUM_RECORDS, NUM_SHARDS)
        with tf.io.TFRecordWriter(os.path.join(path, name)) as writer:
            for number in numbers:
                buffer = io.BytesIO()
                Image.new("RGB", (32, 32), (number, 255 - number, 9)).save(buffer, format="PNG")
                writer.write(schema.make_example(buffer.getvalue(), "PNG", 32, 32, f"{number}.png", number % 3,
                                                 "x").SerializeToString())
        shards.append({"file": name, "records": len(numbers)})
    atomic_write_json(os.path.join(path, schema.METADATA_FILE), {
        "dataset": "numbered", "num_classes": 3, "label_names": ["a", "b", "c"], "label_offset": 0,
        "splits": {"train": {"read": NUM_RECORDS, "written": NUM_RECORDS, "rejected": 0, "shards": shards}},
        "complete": True})
    return path


def _record_numbers(data_dir, service, position, count, batch_size=8):
    from revnet.preprocess import input_pipeline, schema

    dataset = input_pipeline.train_dataset(data_dir, schema.load_metadata(data_dir), augmentation="cifar",
                                           image_size=32, batch_size=batch_size, seed=3, position=position,
                                           data_service=service)
    images = np.concatenate([batch[0].numpy() for batch in dataset.take(-(-count // batch_size))])[:count]
    return images[:, 16, 16, 0].astype(int).tolist()


def test_every_record_exactly_once_per_epoch_through_two_workers(cluster, numbered_data):
    numbers = _record_numbers(numbered_data, cluster.address, 0, 2 * NUM_RECORDS)
    for epoch in range(2):
        assert sorted(numbers[epoch * NUM_RECORDS:(epoch + 1) * NUM_RECORDS]) == list(range(NUM_RECORDS))
    assert numbers[:NUM_RECORDS] != numbers[NUM_RECORDS:2 * NUM_RECORDS]   # each epoch has its own order


def test_resuming_mid_epoch_keeps_the_epoch_boundaries(cluster, numbered_data):
    # 20 records of epoch 1 were consumed before: the rest of epoch 1 is 28 distinct records, then a full epoch.
    numbers = _record_numbers(numbered_data, cluster.address, NUM_RECORDS + 20, 28 + NUM_RECORDS)
    assert len(set(numbers[:28])) == 28
    assert sorted(numbers[28:]) == list(range(NUM_RECORDS))


def test_trainer_trains_through_the_service_across_an_epoch(cluster, toy_data, tmp_path):
    from revnet.train.trainer import run

    summary = run(model="resnet-32", data=toy_data, id="svc", workdir=str(tmp_path), steps=12, batch_size=16,
                  log_every=4, seed=2, progress=False, data_service=cluster.address)
    # 160 training records: 10 steps per epoch, so these 12 steps read epoch 0 and part of epoch 1.
    assert summary["status"] == "completed" and summary["step"] == 12 and summary["data_position"] == 192
    assert np.isfinite(summary["last_loss"])
    log_text = open(os.path.join(tmp_path, "svc", "train.log")).read()
    assert f"input from the tf.data service {cluster.address}" in log_text


def test_unreachable_service_and_bad_addresses_are_user_errors(toy_data, tmp_path):
    from revnet.train.data_service import parse_address
    from revnet.train.trainer import run
    from testkit.trainer_testing import free_port

    for bad in ("localhost", "grpc://host:99999", "http://host:5050", ""):
        with pytest.raises(UserError, match="not HOST:PORT"):
            parse_address(bad)
    with pytest.raises(UserError, match="no tf.data service dispatcher answers"):
        run(model="resnet-32", data=toy_data, id="x", workdir=str(tmp_path), steps=1, batch_size=8,
            data_service=f"127.0.0.1:{free_port()}", data_service_timeout=2)


def _start_trainer(data_dir, workdir, address, log_path, timeout_seconds, steps):
    args = cli_command("train", "--model", "resnet-32", "--data", data_dir, "--id", "kill", "--workdir", workdir,
                       "--steps", str(steps), "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "1000",
                       "--seed", "1", "--data-service", address, "--data-service-timeout", str(timeout_seconds))
    return subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))


def test_a_killed_worker_that_comes_back_lets_training_finish(toy_data, tmp_path):
    servers = ServiceCluster(tmp_path / "servers")
    try:
        log_path = tmp_path / "trainer.log"
        trainer = _start_trainer(toy_data, str(tmp_path / "work"), servers.address, log_path, 60, 60)
        wait_for(lambda: "step 3/60" in log_path.read_text(), 240, "the trainer's third step", trainer)
        servers.workers[1].send_signal(signal.SIGKILL)
        servers.workers[1].wait()
        # The epoch's job cannot finish without the dead worker: the trainer waits and says what to do.
        wait_for(lambda: "if a worker died, restart it" in log_path.read_text(), 120, "the stall warning", trainer)
        servers.workers[1] = servers.start_worker(1, attempt=1)
        assert trainer.wait(timeout=240) == 0, log_path.read_text()[-3000:]
        assert "step 60/60" in log_path.read_text()
    finally:
        servers.stop()


def test_a_worker_that_stays_dead_stops_the_trainer_with_a_checkpoint_and_a_clear_message(toy_data, tmp_path):
    servers = ServiceCluster(tmp_path / "servers")
    try:
        log_path, workdir = tmp_path / "trainer.log", str(tmp_path / "work")
        trainer = _start_trainer(toy_data, workdir, servers.address, log_path, 8, 60)
        wait_for(lambda: "step 3/60" in log_path.read_text(), 240, "the trainer's third step", trainer)
        servers.workers[1].send_signal(signal.SIGKILL)
        servers.workers[1].wait()
        assert trainer.wait(timeout=120) == 1
        stderr = log_path.read_text()
        assert "no training batch from the tf.data service" in stderr and "resume with --id kill" in stderr
        checkpoints = os.path.join(workdir, "kill", "checkpoints")
        saved = [name for name in os.listdir(checkpoints) if name.endswith(".index")]
        assert len(saved) == 1 and int(saved[0][len("ckpt-"):-len(".index")]) >= 3
        # The worker returns; the same --id resumes from that checkpoint and finishes.
        servers.workers[1] = servers.start_worker(1, attempt=1)
        resumed = _start_trainer(toy_data, workdir, servers.address, tmp_path / "resumed.log", 60, 60)
        assert resumed.wait(timeout=240) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    finally:
        servers.stop()
