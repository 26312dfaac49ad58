"""Training throughput: the trainer against its own bare step, against Keras `model.fit`, across replica
counts and with XLA, plus the input pipelines on their own (CIFAR-size PNGs and ImageNet-size JPEGs,
locally and through the tf.data service).

Every row runs in a fresh subprocess (`python -m revnet.benchmarks.train --worker SPEC`): logical CPU
devices must be configured before TensorFlow starts, and no row inherits another's caches. All
workers run with TensorFlow's BFC CPU allocator (TF_CPU_ALLOCATOR_USE_BFC=true), so every row
reports an allocator peak. Steady state: each row runs `warmup` untimed steps (tracing, compiling,
filling the pipeline) and reports the mean over the next `steps`:
- bare: the trainer's compiled step (`steps.make_train_step`) on one in-memory batch, 1 replica;
- trainer: `train.trainer.run` on CIFAR-format TFRecords, the rate its own progress log measures
  between steps `warmup` and `warmup + steps` (input decoding, augmentation and logging included);
- cli: `python -m revnet train` (what `python cli.py train` runs) on resnet-32 with default options and
  `--checkpoint-every STEPS`, timed from its checkpoint files between steps 2*STEPS and 6*STEPS (with the
  default --steps 20: every 20, steps 40 to 120): start-up outside, checkpoint saves, logging and
  summaries inside; beside a Keras fit row timed over the same steps;
- keras: the same ResNet in stock Keras layers (`benchmarks/keras_resnet.py`), `model.fit` on the
  same tf.data pipeline, timed by a callback; once with `jit_compile=False` and once with Keras'
  default (`"auto"`, which turns XLA on for these models);
- pipeline: the training input pipeline alone, images/s and the CPU it burns (every process counted):
  CIFAR PNGs, and ImageNet-size JPEGs (crop-while-decoding on all cores and on one thread, whole-JPEG
  decoding, and through a local tf.data service of 2 workers started for the row and stopped with it).
The bare steps of revnet-38 also run with 19 units per stage in both modes, with and without XLA, so the
allocator peak can be compared across depth.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("resnet-32", "resnet-110", "revnet-38")
CIFAR_RECORDS, IMAGENET_BATCH = 2560, 32
BFC = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


# --------------------------------------------------------------------------------------------------
# Worker side: one row per process
# --------------------------------------------------------------------------------------------------
def measure(spec: Dict) -> Dict:
    """Worker process: one row for `spec` (kind: bare | trainer | keras | pipeline | cli)."""
    from revnet.common.devices import configure_cpu_replicas

    configure_cpu_replicas(spec.get("replicas", 1))
    started_cpu = _cpu_seconds(os.getpid())
    row = {"bare": _bare, "trainer": _trainer, "keras": _keras, "pipeline": _pipeline, "cli": _cli}[spec["kind"]](spec)
    row.setdefault("process_cpu_seconds", _cpu_seconds(os.getpid()) - started_cpu)
    return dict(spec, **row)


def _peak_bytes() -> Optional[int]:
    import tensorflow as tf

    try:
        return int(tf.config.experimental.get_memory_info("CPU:0")["peak"])
    except (ValueError, RuntimeError):
        return None


def _bare(spec: Dict) -> Dict:
    import tensorflow as tf

    from revnet.models import build_model
    from revnet.train.distribute import make_placement
    from revnet.train.optimizer import MomentumSGD
    from revnet.train.steps import make_train_step

    strategy, batch_size = make_placement(gpus=0, cpu_replicas=spec["replicas"]).strategy, spec["batch_size"]
    with strategy.scope():
        overrides = {key: tuple(value) for key, value in spec.get("overrides", {}).items()}
        model = build_model(spec["model"], mode=spec.get("mode", "reversible"), **overrides)
        optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
        step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    size, classes = model.config.input_size, model.config.num_classes

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(batch_size)
        images = tf.random.stateless_uniform([per_replica, size, size, 3], [3, 1], 0, 255)
        labels = tf.random.stateless_uniform([per_replica], [3, 2], 0, classes, dtype=tf.int32)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_steps = make_train_step(model, optimizer, strategy, batch_size, step, position, lambda at: 0.01,
                                  jit=spec.get("jit", False))
    one = tf.constant(1)
    compile_started = time.perf_counter()
    float(train_steps(iterator, one)[0])
    first_step_seconds = time.perf_counter() - compile_started
    for _ in range(spec["warmup"] - 1):
        float(train_steps(iterator, one)[0])
    tf.config.experimental.reset_memory_stats("CPU:0")
    started = time.perf_counter()
    for _ in range(spec["steps"]):
        float(train_steps(iterator, one)[0])
    step_seconds = (time.perf_counter() - started) / spec["steps"]
    return {"step_seconds": step_seconds, "examples_per_second": batch_size / step_seconds,
            "peak_bytes": _peak_bytes(), "first_step_seconds": first_step_seconds}


def _trainer(spec: Dict) -> Dict:
    from revnet.train.summaries import read_scalars
    from revnet.train.trainer import run

    with tempfile.TemporaryDirectory() as workdir:
        # Logging every `steps` steps from step `warmup` (= steps): the progress line at 2*steps covers
        # exactly the measured window.
        summary = run(model=spec["model"], data=spec["data"], id="bench", workdir=workdir,
                      cpu_replicas=spec["replicas"], steps=2 * spec["steps"], batch_size=spec["batch_size"],
                      log_every=spec["steps"], checkpoint_every=10 ** 9, seed=0, progress=False,
                      jit=spec.get("jit", False), steps_per_call=spec.get("steps_per_call", 1))
        rates = read_scalars(os.path.join(summary["experiment_dir"], "tensorboard", "train"))["examples_per_second"]
    (last_step, rate), = [item for item in rates if item[0] == 2 * spec["steps"]]
    return {"step_seconds": spec["batch_size"] / rate, "examples_per_second": rate, "peak_bytes": _peak_bytes()}


def _cli(spec: Dict) -> Dict:
    """`python -m revnet train` as a user runs it (default options plus --checkpoint-every N), timed from the
    modification times of its checkpoints at steps `warmup` and `warmup + steps`: start-up and tracing are
    outside the window, checkpoint saves, logging and summaries inside it."""
    first, last, every = spec["warmup"], spec["warmup"] + spec["steps"], spec["checkpoint_every"]
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "revnet", "train", "--model", spec["model"], "--data", spec["data"],
                   "--id", "cli", "--workdir", workdir, "--batch-size", str(spec["batch_size"]),
                   "--steps", str(last), "--checkpoint-every", str(every), "--seed", "0"]
        folder, seen = os.path.join(workdir, "cli", "checkpoints"), {}
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while process.poll() is None:   # record each checkpoint's time before the manager may delete it
            _note_checkpoints(folder, seen)
            time.sleep(0.05)
        _note_checkpoints(folder, seen)
        stderr = process.stderr.read()
        if process.returncode != 0 or not {first, last} <= set(seen):
            raise RuntimeError(f"`{' '.join(command[1:])}` exited {process.returncode} with checkpoints "
                               f"{sorted(seen)}: {stderr[-2000:]}")
    step_seconds = (seen[last] - seen[first]) / (last - first)
    return {"step_seconds": step_seconds, "examples_per_second": spec["batch_size"] / step_seconds,
            "peak_bytes": None, "checkpoints_in_window": (last - first) // every}


def _note_checkpoints(folder: str, seen: Dict[int, float]) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith("ckpt-") and name.endswith(".index") and name[5:-6].isdigit():
            step = int(name[5:-6])
            if step not in seen:
                try:
                    seen[step] = os.stat(os.path.join(folder, name)).st_mtime
                except OSError:
                    pass


def _keras(spec: Dict) -> Dict:
    import keras

    from revnet.benchmarks.keras_resnet import build_keras_resnet
    from revnet.models.registry import get_config
    from revnet.preprocess import input_pipeline, schema

    metadata = schema.load_metadata(spec["data"])
    config = get_config(spec["model"], num_classes=int(metadata["num_classes"]))
    model = build_keras_resnet(config)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=spec["keras_jit"])
    dataset = input_pipeline.train_dataset(spec["data"], metadata, augmentation="cifar", image_size=32,
                                           batch_size=spec["batch_size"], seed=0)
    marks = {}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in (spec["warmup"], spec["warmup"] + spec["steps"]):
                marks[batch + 1] = time.perf_counter()

    model.fit(dataset, epochs=1, steps_per_epoch=spec["warmup"] + spec["steps"], callbacks=[Timer()], verbose=0,
              shuffle=False)  # the dataset is shuffled already (Keras would warn that it ignores True)
    step_seconds = (marks[spec["warmup"] + spec["steps"]] - marks[spec["warmup"]]) / spec["steps"]
    return {"step_seconds": step_seconds, "examples_per_second": spec["batch_size"] / step_seconds,
            "peak_bytes": _peak_bytes(), "keras_jit_resolved": bool(getattr(model, "jit_compile", False))}


def _pipeline(spec: Dict) -> Dict:
    import tensorflow as tf

    from revnet.preprocess import input_pipeline, schema

    metadata = schema.load_metadata(spec["data"])
    core_limit = spec.get("core_limit")
    if core_limit and not spec.get("service_workers"):
        _pin_this_process(range(core_limit))
    servers = (_start_service(spec["service_workers"], core_limit=core_limit) if spec.get("service_workers")
               else None)
    try:
        if spec.get("full_decode"):
            dataset = _full_decode_dataset(spec["data"], metadata, spec["image_size"], spec["batch_size"])
        else:
            dataset = input_pipeline.train_dataset(
                spec["data"], metadata, augmentation=spec["augmentation"], image_size=spec["image_size"],
                batch_size=spec["batch_size"], seed=0, data_service=servers["address"] if servers else None)
        if spec.get("threads"):
            options = tf.data.Options()
            options.threading.private_threadpool_size = spec["threads"]
            dataset = dataset.with_options(options)
        iterator = iter(dataset)
        for _ in range(spec["warmup"]):
            next(iterator)
        pids = [os.getpid()] + ([p.pid for p in servers["processes"]] if servers else [])
        cpu_before = {pid: _cpu_seconds(pid) for pid in pids}
        started = time.perf_counter()
        for _ in range(spec["steps"]):
            next(iterator)
        seconds = time.perf_counter() - started
        cpu = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in pids}
    finally:
        if servers:
            _stop_service(servers)
    images = spec["steps"] * spec["batch_size"]
    names = ["client"] + (["dispatcher"] + [f"worker{i + 1}" for i in range(spec["service_workers"])]
                          if servers else [])
    return {"step_seconds": seconds / spec["steps"], "examples_per_second": images / seconds,
            "cores_used": {name: round(cpu[pid] / seconds, 2) for name, pid in zip(names, pids, strict=True)},
            "images_per_cpu_second": images / max(sum(cpu.values()), 1e-9)}


def _full_decode_dataset(data_dir: str, metadata: Dict, image_size: int, batch_size: int):
    """The ImageNet training pipeline as it was before crop-while-decoding: decode all, then crop."""
    import tensorflow as tf

    from revnet.preprocess import input_pipeline, schema

    def augment(index, record):
        features = schema.parse_example(record)
        image = input_pipeline.decode_rgb(features[schema.ENCODED])
        seed = tf.stack([tf.constant(0, tf.int64), index])
        return input_pipeline.train_augment(image, "imagenet", image_size, seed), features[schema.LABEL]

    files = schema.split_files(data_dir, metadata, "train")
    return (tf.data.TFRecordDataset(files).repeat().enumerate()
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin_this_process(cores) -> None:
    """Limit every thread of this process (and the threads they start) to `cores`: the local pipeline's
    share of the machine in the core-limited rows."""
    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), set(cores))


def _start_service(num_workers: int, core_limit: Optional[int] = None) -> Dict:
    """A dispatcher and `num_workers` workers (`cli.py data-service`) on free 127.0.0.1 ports. With
    `core_limit`, worker i runs on cores [i * core_limit, (i + 1) * core_limit) only (set before exec, so
    every thread of the worker inherits it), as if each had a machine of that many cores."""
    from revnet.train.data_service import wait_until_reachable

    def free_port():
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # The servers must not outlive this row's process, whatever ends it (a timeout kills it with SIGKILL).
    spawn = {"env": env, "stdout": subprocess.DEVNULL, "preexec_fn": _die_with_parent()}
    command = [sys.executable, "-m", "revnet.cli", "data-service"]
    dispatcher_log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    processes = [subprocess.Popen(command + ["dispatcher", "--port", str(port)], stderr=dispatcher_log, **spawn)]
    servers = {"address": f"grpc://127.0.0.1:{port}", "processes": processes, "log": dispatcher_log}
    try:
        wait_until_reachable(f"127.0.0.1:{port}", 60)
        for index in range(num_workers):
            worker_spawn = dict(spawn)
            if core_limit:
                cores = set(range(index * core_limit, (index + 1) * core_limit))
                worker_spawn["preexec_fn"] = _die_with_parent(cores)
            processes.append(subprocess.Popen(command + ["worker", "--dispatcher", f"127.0.0.1:{port}", "--port",
                                                         str(free_port())], stderr=subprocess.DEVNULL,
                                              **worker_spawn))
        deadline = time.monotonic() + 120
        while f"workers registered: {num_workers}" not in open(dispatcher_log.name).read():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{num_workers} tf.data service workers did not register within 120 s")
            time.sleep(0.2)
    except BaseException:
        _stop_service(servers)
        raise
    return servers


def _die_with_parent(cores=None):
    """A preexec_fn: in the child, before exec, ask Linux to SIGTERM it when its parent ends
    (prctl PR_SET_PDEATHSIG), and with `cores` limit it to them. Loaded here, so the forked child imports
    nothing (TensorFlow's threads may hold Python locks at fork time)."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child():
        prctl(1, int(signal.SIGTERM))
        if cores:
            os.sched_setaffinity(0, cores)
    return in_child


def _stop_service(servers: Dict) -> None:
    if "log" in servers:
        servers["log"].close()
    for process in servers["processes"]:
        process.terminate()
    for process in servers["processes"]:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# --------------------------------------------------------------------------------------------------
# Driver side: data, plan, table
# --------------------------------------------------------------------------------------------------
def write_imagenet_size_records(out_dir: str, count: int = 2048, seed: int = 0) -> Dict:
    """`count` ImageNet-size JPEGs (500x375, 375x500 or 500x333, quality 90, about 100 KB each: random
    crops of a real photograph, resized, with sensor-like noise) as training TFRecords + metadata.json."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from revnet.common.fileio import atomic_write_json
    from revnet.preprocess import schema
    from revnet.preprocess.fake_data import matplotlib_photos

    rng = np.random.default_rng(seed)
    photo = Image.open(matplotlib_photos()[0]).convert("RGB")
    num_shards, shards, total_bytes = 16, [], 0
    os.makedirs(out_dir, exist_ok=True)
    for shard in range(num_shards):
        name = schema.shard_name("train", shard, num_shards)
        indices = range(shard, count, num_shards)
        with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
            for index in indices:
                width, height = [(500, 375), (375, 500), (500, 333)][index % 3]
                side = int(rng.uniform(0.4, 1.0) * min(photo.size))
                left, top = rng.integers(0, photo.size[0] - side + 1), rng.integers(0, photo.size[1] - side + 1)
                crop = photo.crop((left, top, left + side, top + side)).resize((width, height), Image.BILINEAR)
                pixels = np.asarray(crop, np.float32) + rng.normal(0, 9, (height, width, 3))
                buffer = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
                total_bytes += buffer.tell()
                writer.write(schema.make_example(buffer.getvalue(), "JPEG", height, width, f"{index}.JPEG",
                                                 index % 10, f"class {index % 10}").SerializeToString())
        shards.append({"file": name, "records": len(indices)})
    metadata = {"dataset": "imagenet-size", "num_classes": 10, "label_names": [f"class {i}" for i in range(10)],
                "label_offset": 0, "complete": True, "mean_jpeg_bytes": total_bytes // count,
                "splits": {"train": {"read": count, "written": count, "rejected": 0, "shards": shards}}}
    atomic_write_json(os.path.join(out_dir, schema.METADATA_FILE), metadata)
    return metadata


def plan(models: List[str], batch_sizes: List[int], steps: int, jit_steps: int, cifar_dir: str,
         imagenet_dir: Optional[str], imagenet_batches: int = 100) -> List[Dict]:
    """The rows, in table order."""
    from revnet.models.registry import get_config

    specs = []
    for name in models:
        config = get_config(name)
        for batch in batch_sizes:
            base = {"model": config.name, "batch_size": batch, "replicas": 1, "steps": steps, "warmup": 5}
            modes = ("reversible", "autodiff") if config.architecture == "revnet" else ("autodiff",)
            for mode in modes:
                specs.append(dict(base, kind="bare", mode=mode))
                specs.append(dict(base, kind="bare", mode=mode, jit=True, steps=jit_steps, warmup=2))
            trainer = dict(base, kind="trainer", data=cifar_dir, warmup=steps)
            specs += [trainer, dict(trainer, replicas=2)]
            if config.architecture == "resnet":
                specs.append(dict(base, kind="keras", data=cifar_dir, keras_jit=False, warmup=steps))
                specs.append(dict(base, kind="keras", data=cifar_dir, keras_jit="auto", steps=jit_steps, warmup=2))
            if config.name == "resnet-32" and batch == batch_sizes[0]:
                # What a user sees: the CLI process checkpointing every `steps` (20: steps 40-120 by default)
                # against Keras fit over the same steps.
                window = dict(base, data=cifar_dir, warmup=2 * steps, steps=4 * steps, window="cli")
                specs += [dict(window, kind="cli", checkpoint_every=steps), dict(window, kind="keras", keras_jit=False)]
    if "revnet-38" in models:
        # Memory against depth with and without XLA: the same RevNet with 19 instead of 3 units per stage.
        deep = {"kind": "bare", "model": "revnet-38", "batch_size": batch_sizes[0], "replicas": 1, "steps": jit_steps,
                "warmup": 2, "overrides": {"units_per_stage": [19, 19, 19]}}
        specs += [dict(deep, mode=mode, jit=jit) for mode in ("reversible", "autodiff") for jit in (None, True)]
    for batch in batch_sizes:
        specs.append({"kind": "pipeline", "model": "cifar input", "data": cifar_dir, "augmentation": "cifar",
                      "image_size": 32, "batch_size": batch, "steps": steps, "warmup": 5})
    if imagenet_dir:
        # Warm-up and timed batches stay inside one epoch (each epoch is a new service job).
        base = {"kind": "pipeline", "model": "imagenet input", "data": imagenet_dir, "augmentation": "imagenet",
                "image_size": 224, "batch_size": IMAGENET_BATCH, "steps": imagenet_batches,
                "warmup": max(1, imagenet_batches // 4)}
        specs += [dict(base, full_decode=True), dict(base, threads=1), dict(base), dict(base, service_workers=2)]
        if (os.cpu_count() or 1) >= 2:
            # Each side limited to a known share of the machine: the local pipeline to one core, each of the
            # two workers to a core of its own (the trainer-side client runs wherever it finds time).
            specs += [dict(base, core_limit=1), dict(base, service_workers=2, core_limit=1)]
    return specs


def parse_batch_sizes(text: str) -> List[int]:
    """"32,128" -> [32, 128]; every size even (2 replicas split it), else a UserError."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(size < 2 or size % 2 for size in sizes):
        raise UserError(f"--batch-sizes {text!r}: expected comma-separated even numbers >= 2, e.g. 32,128 "
                        f"(the 2-replica rows split each batch in two)")
    return sizes


def run_train_benchmark(models: List[str] = DEFAULT_MODELS, batch_sizes: List[int] = (32, 128), steps: int = 20,
                        jit_steps: int = 5, imagenet: bool = True, timeout_seconds: float = 3600,
                        cifar_records: int = CIFAR_RECORDS, imagenet_batches: int = 100) -> List[Dict]:
    """Measure every row of `plan` in a fresh subprocess, one after another (each row's processes end
    with it: a row over `timeout_seconds` is killed and the benchmark fails naming it)."""
    from revnet.benchmarks.worker import run_worker
    from revnet.models.registry import get_config
    from revnet.preprocess.fake_data import write_toy_dataset

    if steps < 2 or jit_steps < 1 or imagenet_batches < 2:
        raise UserError("--steps must be >= 2, --jit-steps >= 1 and the ImageNet batches >= 2")
    parse_batch_sizes(",".join(map(str, batch_sizes)))
    models = [get_config(name).name for name in models]
    unknown = sorted(set(models) - set(DEFAULT_MODELS))
    if unknown:
        raise UserError(f"benchmark train covers {', '.join(DEFAULT_MODELS)} (the Keras baseline and the "
                        f"CIFAR data), not {', '.join(unknown)}")
    # Warm-up (a quarter) and timed batches fit in one epoch: 100 batches of 32 -> 5120 images.
    imagenet_records = imagenet_batches * IMAGENET_BATCH * 8 // 5
    rows = []
    with tempfile.TemporaryDirectory() as root:
        cifar_dir, imagenet_dir = os.path.join(root, "cifar"), os.path.join(root, "imagenet")
        write_toy_dataset(cifar_dir, num_train=cifar_records, num_validation=10, num_classes=10, num_shards=10)
        mean_jpeg_bytes = None
        if imagenet:
            mean_jpeg_bytes = write_imagenet_size_records(imagenet_dir, imagenet_records)["mean_jpeg_bytes"]
        specs = plan(models, batch_sizes, steps, jit_steps, cifar_dir, imagenet_dir if imagenet else None,
                     imagenet_batches)
        for index, spec in enumerate(specs, 1):
            log.info("[%d/%d] %s %s batch %d", index, len(specs), spec["model"], describe(spec), spec["batch_size"])
            row = run_worker("revnet.benchmarks.train", spec, f"train benchmark row {describe(spec)}", BFC,
                             timeout_seconds)
            row.pop("data", None)
            if row["model"] == "imagenet input":
                row["mean_jpeg_bytes"] = mean_jpeg_bytes
            rows.append(row)
    return rows


def describe(row: Dict) -> str:
    """The row's label in the table."""
    if row["kind"] == "pipeline":
        if row.get("service_workers"):
            each = f", {row['core_limit']} core each" if row.get("core_limit") else ""
            return f"tf.data service, {row['service_workers']} workers{each}"
        if row.get("core_limit"):
            return f"local, {row['core_limit']} core"
        if row.get("full_decode"):
            return "local, decode whole JPEG"
        return f"local, {row['threads']} thread" if row.get("threads") else "local"
    window = f"steps {row.get('warmup')}-{row.get('warmup', 0) + row.get('steps', 0)}"
    if row["kind"] == "cli":
        return f"cli.py train, {window}"
    if row["kind"] == "keras":
        if row.get("window") == "cli":
            return f"keras fit, {window}"
        return "keras fit, jit_compile=auto" if row["keras_jit"] == "auto" else "keras fit"
    label = {"bare": "bare step", "trainer": "trainer"}[row["kind"]]
    if row.get("mode") == "reversible" or (row["kind"] == "bare" and row["model"].startswith("revnet")):
        label += f" {row['mode']}"
    if row.get("overrides"):
        label += ", " + "-".join(map(str, row["overrides"]["units_per_stage"])) + " units"
    if row.get("replicas", 1) > 1:
        label += f", {row['replicas']} replicas"
    return label + (", --jit" if row.get("jit") else "")


def _ratio(row: Dict, reference: Optional[Dict]) -> str:
    return f"{row['examples_per_second'] / reference['examples_per_second']:.2f}x" if reference else ""


def format_rows(rows: List[Dict]) -> str:
    """One table; the ratio column compares each row with what its target names."""
    def find(model, batch, **fields):
        return next((r for r in rows if r["model"] == model and r["batch_size"] == batch
                     and all(r.get(key) == value for key, value in fields.items())), None)

    header = f"{'model':<15}{'batch':>6}  {'what':<34}{'step s':>8}{'ex/s':>9}{'peak MB':>9}  ratio"
    lines = [header, "-" * (len(header) + 26)]
    for row in rows:
        model, batch = row["model"], row["batch_size"]
        bare_mode = "reversible" if model.startswith("revnet") else "autodiff"
        ratio = ""
        if row["kind"] == "bare" and row.get("jit"):
            plain = find(model, batch, kind="bare", mode=row["mode"], jit=None, overrides=row.get("overrides"))
            ratio = f"{_ratio(row, plain)} of no jit"
        elif row["kind"] == "cli":
            keras = find(model, batch, kind="keras", window="cli")
            trainer = find(model, batch, kind="trainer", replicas=1)
            ratio = f"{_ratio(row, keras)} of keras fit" if keras else ""
            if trainer:
                extra = row["step_seconds"] - trainer["step_seconds"]
                ratio += f", {_ratio(row, trainer)} of trainer"
                if extra > 0:   # slower than the in-process trainer: what each checkpoint would cost
                    per_save = extra * row["steps"] / row["checkpoints_in_window"]
                    ratio += (f" (+{1000 * extra:.0f} ms/step: {per_save:.2f} s per checkpoint if the saves "
                              "cost it all)")
        elif row["kind"] == "trainer" and row["replicas"] == 1:
            keras = find(model, batch, kind="keras", keras_jit=False, window=None)
            bare = find(model, batch, kind="bare", mode=bare_mode, jit=None, overrides=None)
            ratio = f"{_ratio(row, bare)} of bare step"
            ratio += f", {_ratio(row, keras)} of keras fit" if keras else ""
        elif row["kind"] == "trainer":
            ratio = f"{_ratio(row, find(model, batch, kind='trainer', replicas=1))} of 1 replica"
        elif row["kind"] == "keras" and row["keras_jit"] == "auto":
            without = find(model, batch, kind='keras', keras_jit=False, window=None)
            ratio = f"{_ratio(row, without)} of jit_compile=False"
        elif row.get("service_workers"):
            limit = row.get("core_limit")
            local = find(model, batch, kind='pipeline', service_workers=None, threads=None, full_decode=None,
                         core_limit=limit)
            ratio = f"{_ratio(row, local)} of local" + (f", {limit} core" if limit else "")
        elif row["kind"] == "pipeline" and row["model"] == "imagenet input":
            ratio = f"{row['images_per_cpu_second']:.0f} images per CPU-second"
        if row["kind"] == "bare" and row.get("overrides"):
            shallow = find(model, batch, kind="bare", mode=row["mode"], jit=row.get("jit"), overrides=None)
            if shallow and shallow.get("peak_bytes") and row.get("peak_bytes"):
                ratio += f"; peak {row['peak_bytes'] / shallow['peak_bytes']:.2f}x of 3-3-3 units"
        peak = f"{row['peak_bytes'] / 1e6:.0f}" if row.get("peak_bytes") else "-"
        lines.append(f"{model:<15}{batch:>6}  {describe(row):<34}{row['step_seconds']:>8.3f}"
                     f"{row['examples_per_second']:>9.1f}{peak:>9}  {ratio}")
    cores = [r for r in rows if r["kind"] == "pipeline" and r["model"] == "imagenet input"]
    if cores:
        lines += ["", "ImageNet-size input (224x224 random-resized crop + flip, batch 32), cores busy per process:"]
        for row in cores:
            busy = ", ".join(f"{name} {value:.2f}" for name, value in row["cores_used"].items())
            lines.append(f"  {describe(row):<28} {busy}  ({row['images_per_cpu_second']:.0f} images per CPU-second)")
    return "\n".join(lines)


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "train")
