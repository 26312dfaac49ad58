"""Command line for the RevNet pipeline: `python cli.py COMMAND --help` (or the `revnet` console script).

This file only parses options and calls one function per command; each command is a tested Python
function in its package. Bad input (UserError) becomes a one-line message and exit code 2; any other
failure a one-line message and exit code 1. `--debug` shows the traceback instead.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from revnet.common.options import click_options, given
from revnet.models.registry import ModelConfig
from revnet.pipeline.preprocess_config import DATASETS, PreprocessConfig
from revnet.serving.serve_config import ExportConfig, ServeConfig
from revnet.train.train_config import DEFAULT_WORKDIR, TrainConfig
from revnet.train.preflight import check_experiment_arguments, check_import_arguments, check_train_arguments

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class ErrorHandlingGroup(click.Group):
    def main(self, *args, **kwargs):
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, standalone_mode=False, **{k: v for k, v in kwargs.items()
                                                                   if k != "standalone_mode"})
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - the one place errors become messages
            from revnet.common.errors import UserError

            if _debug_requested():
                raise
            if isinstance(error, ImportError):  # a partial install: name the module and the fix
                from revnet.common.optional import missing_module_message

                click.echo(f"error: {missing_module_message(error)}", err=True)
                sys.exit(1)
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if isinstance(error, UserError):
                click.echo(f"error: {message}", err=True)
                sys.exit(2)
            click.echo(f"error: {type(error).__name__}: {message} (run with --debug for the traceback)", err=True)
            sys.exit(1)


def _debug_requested() -> bool:
    return "--debug" in sys.argv[1:2] or os.environ.get("REVNET_DEBUG") == "1"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "tensorflow", "apache_beam", "tf2onnx", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def _emit(result, as_json: bool, format_text) -> None:
    """Print a command's result: as JSON with --json, else as `format_text(result)`."""
    if as_json:
        _print_json(result)
    else:
        click.echo(format_text(result))


class Command(click.Command):
    """A command whose arguments are parsed, and checked by `preflight` (TensorFlow-free), before TensorFlow
    is imported: a typo costs nothing. `tensorflow=False` for commands that never import it (preprocess)."""

    def __init__(self, *args, tensorflow: bool = True, preflight=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tensorflow, self.preflight = tensorflow, preflight

    def invoke(self, ctx):
        if self.preflight is not None:
            self.preflight(**ctx.params)
        if self.tensorflow and not _debug_requested():
            from revnet.common.devices import quiet_tensorflow

            quiet_tensorflow()  # TensorFlow's C++ start-up chatter kept out of the user's stderr
        return super().invoke(ctx)


class CommandGroup(click.Group):
    command_class = Command


CommandGroup.group_class = CommandGroup
ErrorHandlingGroup.command_class = Command
ErrorHandlingGroup.group_class = CommandGroup


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (must come first).")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logging on stderr.")
def cli(debug, verbose):
    """Reversible Residual Networks (Gomez et al., NIPS 2017) on TensorFlow 2: preprocess, train,
    evaluate, export, serve.

    Results go to stdout, logs to stderr. Run `COMMAND --help` for each command's options.
    """
    if debug:
        os.environ["REVNET_DEBUG"] = "1"
    _setup_logging(verbose)


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------
@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models_command(as_json):
    """List the model zoo: name, dataset family, blocks, channels, parameters, input size."""
    from revnet.models.summary import model_table, format_model_table

    rows = model_table()
    _emit(rows, as_json, format_model_table)


# ---------------------------------------------------------------------------------------------------
# benchmark (one subcommand per benchmark module in benchmarks/)
# ---------------------------------------------------------------------------------------------------
@cli.group("benchmark")
def benchmark_group():
    """Measure memory, speed and throughput; every figure in the README comes from here."""


@benchmark_group.command("memory")
@click.option("--models", "model_names", default="resnet-32,resnet-110,revnet-38,revnet-110,revnet-164",
              help="Comma-separated model names (see `cli.py models`).")
@click.option("--batch-size", "batch_sizes", default="32", help="Comma-separated training batch sizes, e.g. 32,128.")
@click.option("--steps", type=click.IntRange(min=1), default=3, help="Measured steps per row (after one warm-up step).")
@click.option("--modes", default="reversible,autodiff,recompute",
              help="Comma-separated modes: reversible (RevNets only), autodiff, recompute (tf.recompute_grad "
                   "around every unit).")
@click.option("--precision", "precisions", default="float32",
              help="Comma-separated precisions: float32, bf16, fp16 (F and G compute in it; the RevNet stream stays "
                   "float32).")
@click.option("--units", multiple=True,
              help="Units per stage for a deeper or shallower variant, A,B,C for every listed model or "
                   "MODEL=A,B,C for one; repeat for a depth sweep (e.g. --units revnet-38=100,100,100).")
@click.option("--numerics/--no-numerics", default=True,
              help="Also measure the gradient error against float64 autodiff and the reconstruction error.")
@click.option("--numerics-batch", type=click.IntRange(min=2), default=8, help="Batch size for the numerics.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of peak and activation memory against depth here.")
def benchmark_memory_command(model_names, batch_sizes, steps, modes, precisions, units, numerics, numerics_batch,
                             json_path, plot_path):
    """Peak memory, step time and numerics of a full training step (inside tf.function), each row in a
    fresh subprocess; prints the table, the reversible-vs-baseline ratios and the growth with depth."""
    from revnet.benchmarks.memory import run_memory_benchmark
    from revnet.benchmarks.memory_report import format_rows

    rows = run_memory_benchmark(model_names.split(","), batch_sizes.split(","), steps, modes.split(","),
                                precisions.split(","), units, numerics, numerics_batch, json_path=json_path,
                                plot_path=plot_path)
    click.echo(format_rows(rows))


# ---------------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------------
@cli.command("preprocess", context_settings={"ignore_unknown_options": True}, tensorflow=False)
@click.argument("dataset", type=click.Choice(DATASETS))
@click_options(PreprocessConfig)
@click.option("--json", "as_json", is_flag=True, help="Print metadata.json instead of a summary table.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def preprocess_command(dataset, as_json, beam_args, **options):
    """Turn a raw DATASET (cifar-10, cifar-100, imagenet, or a folder of your own images) into sharded
    TFRecords with an Apache Beam pipeline (docs/data.md).

    Beam pipeline options go after `--`, e.g. `-- --runner=DataflowRunner --project=P --region=R
    --temp_location=gs://B/tmp` (our code is shipped to such workers as a wheel, without TensorFlow) or
    `-- --runner=DaskRunner --dask_client_address=tcp://HOST:PORT`. Without them the pipeline runs
    locally with --workers processes. Progress (shards done, images/s, ETA) goes to stderr.
    """
    from revnet.pipeline import format_summary, run_preprocess

    config = PreprocessConfig(dataset=dataset, beam_args=beam_args, **options)
    metadata = run_preprocess(config)
    _emit(metadata, as_json, lambda result: format_summary(result, config.output_dir))


@benchmark_group.command("preprocess")
@click.option("--images", "num_images", type=click.IntRange(min=10), default=300,
              help="Synthetic ImageNet-style JPEGs to generate (some grayscale, CMYK and PNG-named-JPEG).")
@click.option("--workers", "worker_counts", default="1,2",
              help="Comma-separated worker counts (forked shard workers, Beam SDK harnesses or Dask processes).")
@click.option("--runners", default="direct,multi_processing,dask",
              help="Comma-separated runners: direct (in-process, shards in forked workers), multi_processing "
                   "(Beam's own worker processes), dask (a LocalCluster on 127.0.0.1).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, help="Runs per row; the median is shown.")
@click.option("--seed", type=int, default=0, help="Seed of the synthetic images.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def benchmark_preprocess_command(num_images, worker_counts, runners, repeats, seed, as_json):
    """Images per second on the ImageNet path: a plain single-process Python loop against the Beam
    pipeline on each runner with each worker count, measured in one run on the same generated JPEG
    tree, each row in a fresh process, with the CPU seconds of the process and of its children."""
    from revnet.benchmarks.preprocess import format_rows, run_preprocess_benchmark

    rows = run_preprocess_benchmark(num_images, worker_counts, seed, runners, repeats)
    _emit(rows, as_json, format_rows)


# ---------------------------------------------------------------------------------------------------
# train / eval
# ---------------------------------------------------------------------------------------------------
@cli.command("train", preflight=check_train_arguments)
@click.option("--model", required=True, help="Model name (see `cli.py models`), e.g. revnet-38 or revnet-104.")
@click.option("--data", default=None, help="Dataset folder from `cli.py preprocess` (metadata.json + TFRecords); "
              "optional when resuming an --id.")
@click.option("--id", "exp_id", default=None, help="Experiment id; a fresh one is generated and printed if omitted. "
              "An existing id resumes from its latest checkpoint.")
@click.option("--workdir", default=DEFAULT_WORKDIR, help="Folder that holds the experiment folders.")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="Number of GPUs for MirroredStrategy [default: all visible; CPU when there are none].")
@click.option("--cpu-replicas", type=click.IntRange(min=1), default=1,
              help="Split the CPU into N logical devices for multi-replica synchronous SGD without GPUs.")
@click.option("--data-service", default=None, metavar="grpc://HOST:PORT",
              help="Decode and augment the training data on a tf.data service (see `cli.py data-service`); "
                   "record order then depends on worker timing (README: Scaling out).")
@click.option("--data-service-timeout", type=click.FloatRange(min=1), default=600.0,
              help="With --data-service: seconds without a training batch after which the trainer saves a "
                   "checkpoint and exits 1 (a worker lost mid-epoch blocks its job until it returns).")
@click_options(TrainConfig)
@click_options(ModelConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def train_command(model, data, exp_id, workdir, gpus, cpu_replicas, data_service, data_service_timeout, as_json,
                  **overrides):
    """Train a model with synchronous SGD (or resume an experiment); SIGTERM saves a checkpoint and exits 143.

    Every training option defaults to the paper's recipe for the model's dataset family (CIFAR or
    ImageNet); on resume, to the experiment's saved config.
    """
    from revnet.train.preemption import Preempted, stop_startup_on_sigterm

    stop_startup_on_sigterm()  # first, so a SIGTERM while TensorFlow loads is a clean stop, not a kill
    try:
        from revnet.common.devices import configure_cpu_replicas

        configure_cpu_replicas(cpu_replicas)  # before TensorFlow runs any op
        from revnet.train.trainer import run

        summary = run(model=model, data=data, id=exp_id, workdir=workdir, gpus=gpus, cpu_replicas=cpu_replicas,
                      data_service=data_service, data_service_timeout=data_service_timeout, **given(overrides))
    except Preempted as stopped:
        click.echo(f"error: {stopped}", err=True)
        sys.exit(143)
    if as_json:
        _print_json(summary)
    else:
        click.echo(f"{summary['id']}: {summary['status']} at step {summary['step']} "
                   f"loss={summary['last_loss']} checkpoint={summary['checkpoint']}")
    if summary["status"] == "preempted":
        sys.exit(143)


@cli.command("eval", preflight=check_experiment_arguments)
@click.option("--id", "exp_id", required=True, help="Experiment id to evaluate.")
@click.option("--workdir", default=DEFAULT_WORKDIR, help="Folder that holds the experiment folders.")
@click.option("--once", is_flag=True, help="Evaluate the latest checkpoint once, print top1/top5/loss and exit.")
@click.option("--split", default="validation", help="Split to evaluate (train or validation).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Eval batch size [default: recipe].")
@click.option("--timeout", "timeout_seconds", type=click.FloatRange(min=0), default=3600.0,
              help="Stop watching after this many seconds without a new checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_command(exp_id, workdir, once, split, batch_size, timeout_seconds, as_json):
    """Evaluate an experiment's checkpoints on the full split (watching for new ones unless --once)."""
    from revnet.train.evaluator import evaluate

    result = evaluate(id=exp_id, workdir=workdir, once=once, split=split, batch_size=batch_size,
                            timeout_seconds=timeout_seconds)
    if as_json:
        _print_json(result)
    elif result is not None:
        click.echo(f"top1={result['top1']:.4f} top5={result['top5']:.4f} loss={result['loss']:.4f}")


@cli.group("data-service")
def data_service_group():
    """tf.data service servers: a dispatcher and workers that decode and augment training batches for
    `train --data-service grpc://HOST:PORT` (each training record once per epoch: DYNAMIC sharding).

    TensorFlow's servers listen on all interfaces whatever --host says (TensorFlow has no bind option);
    --host is the address they give to clients. SIGTERM or Ctrl-C stops them cleanly.
    """


@data_service_group.command("dispatcher")
@click.option("--port", type=click.IntRange(0, 65535), default=5050, help="Port to serve on (0 = any free port).")
@click.option("--host", default="127.0.0.1", help="Address trainers and workers reach this dispatcher at.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Journal the dispatcher's state here (fault-tolerant mode: a restarted dispatcher resumes its "
                   "jobs).")
@click.option("--worker-timeout", "worker_timeout_seconds", type=click.FloatRange(min=0.1), default=10.0,
              help="Seconds without a heartbeat after which a worker counts as gone and its work is handed on.")
def data_service_dispatcher_command(port, host, work_dir, worker_timeout_seconds):
    """Run the tf.data service dispatcher until SIGTERM."""
    from revnet.train.data_service import run_dispatcher

    run_dispatcher(port=port, host=host, work_dir=work_dir, worker_timeout_seconds=worker_timeout_seconds)


@data_service_group.command("worker")
@click.option("--dispatcher", required=True, metavar="HOST:PORT", help="The dispatcher's address.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port to serve on (0 = any free port).")
@click.option("--host", default="127.0.0.1", help="Address the trainer reaches this worker at.")
@click.option("--connect-timeout", "connect_timeout_seconds", type=click.FloatRange(min=0), default=60.0,
              help="Seconds to wait for the dispatcher to answer before giving up.")
def data_service_worker_command(dispatcher, port, host, connect_timeout_seconds):
    """Run a tf.data service worker (decodes and augments training data) until SIGTERM."""
    from revnet.train.data_service import run_worker

    run_worker(dispatcher=dispatcher, port=port, host=host, connect_timeout_seconds=connect_timeout_seconds)


@cli.command("import-weights", preflight=check_import_arguments)
@click.option("--checkpoint", required=True,
              help="The original code's checkpoint: a prefix (PREFIX.index exists), a folder with a 'checkpoint' "
                   "state file, or the released .tar.gz (its checkpoint files are unpacked into a temporary folder).")
@click.option("--model", required=True,
              help="Architecture (see `cli.py models`): ResNet or RevNet, block and units per stage. Widths and the "
                   "class count are read from the checkpoint, so narrower or wider variants import too.")
@click.option("--id", "exp_id", required=True, help="Experiment id to create (must not exist yet).")
@click.option("--workdir", default=DEFAULT_WORKDIR, help="Folder that holds the experiment folders.")
@click.option("--data", default=None,
              help="Dataset folder from `cli.py preprocess`: used by eval/train --id, its class names for exports, "
                   "and for CIFAR its recorded training-split per-pixel mean.")
@click.option("--pixel-mean", default=None,
              help="CIFAR: per-channel means R,G,B (0..255) subtracted from raw pixels, e.g. 125.3,123.0,113.9 "
                   "(instead of the --data dataset's recorded mean image).")
@click.option("--labels", default=None, type=click.Path(dir_okay=False),
              help="Class names for exports, one per line (line k names logit k) [default: the dataset's].")
@click.option("--preprocessing", type=click.Choice(["cifar", "imagenet", "inception"]), default=None,
              help="Evaluation/serving preprocessing [default: the original's: cifar, or inception (central 87.5% "
                   "crop, then resize) for ImageNet].")
@click.option("--units", default=None,
              help="Units per stage when the checkpoint's differ from --model's, e.g. 9-9-9 with --model resnet-32 "
                   "for a ResNet-56 [default: the registry model's].")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
def import_weights_command(checkpoint, model, exp_id, workdir, data, pixel_mean, labels, preprocessing, units,
                           as_json):
    """Import a checkpoint of the original TF1 code (renmengye/revnet-public, e.g. the pretrained RevNet-104)
    as an experiment that `eval --id`, `export --id` and `train --id` (fine-tuning) use unchanged.

    Every model weight and moving statistic must map onto the model exactly once with equal shapes;
    optimizer slots, counters and the learning rate are ignored and counted. On any misfit nothing
    is written. The model applies the original's input normalisation itself (CIFAR: minus the mean
    image; ImageNet: (x/255 - 0.5) * 2), so it still takes raw 0..255 pixels.
    """
    from revnet.train.import_weights import format_report, import_weights

    report = import_weights(checkpoint=checkpoint, model=model, id=exp_id, workdir=workdir, data=data,
                            pixel_mean=pixel_mean, labels=labels, preprocessing=preprocessing, units=units)
    _emit(report, as_json, format_report)


@benchmark_group.command("train")
@click.option("--models", default="resnet-32,resnet-110,revnet-38",
              help="Comma-separated CIFAR models; '' measures only the input pipelines.")
@click.option("--batch-sizes", default="32,128",
              help="Comma-separated global batch sizes (even: 2 replicas split them).")
@click.option("--steps", type=click.IntRange(min=2), default=20,
              help="Timed steps per row (the trainer and Keras also warm up for as many).")
@click.option("--jit-steps", type=click.IntRange(min=1), default=5,
              help="Timed steps of the XLA rows (compiling and running them is slow on CPU).")
@click.option("--imagenet/--no-imagenet", default=True,
              help="Also measure the ImageNet-size JPEG input pipeline, locally and through the tf.data service.")
@click.option("--imagenet-batches", type=click.IntRange(min=2), default=100,
              help="Batches of 32 JPEGs timed per ImageNet row (a quarter as many more warm up; "
                   "1.6x as many images are generated, so the window stays inside one epoch).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows as JSON here.")
def benchmark_train_command(models, batch_sizes, steps, jit_steps, imagenet, imagenet_batches, json_path):
    """Training throughput, one fresh process per row: the bare compiled step, the trainer on TFRecords
    (1 and 2 CPU replicas), Keras model.fit of the same ResNet, --jit on and off, and the input
    pipelines alone (CIFAR PNGs; ImageNet-size JPEGs locally and through 2 tf.data service workers)."""
    from revnet.benchmarks.train import format_rows, parse_batch_sizes, run_train_benchmark
    from revnet.common.fileio import atomic_write_json

    names = [name for name in models.split(",") if name.strip()]
    rows = run_train_benchmark(names, parse_batch_sizes(batch_sizes), steps, jit_steps, imagenet,
                               imagenet_batches=imagenet_batches)
    if json_path:
        atomic_write_json(json_path, rows)
    click.echo(format_rows(rows))


@benchmark_group.command("finetune")
@click.option("--model", default="revnet-38", help="A CIFAR-style model (32x32 inputs).")
@click.option("--pretrain-steps", type=click.IntRange(min=1), default=300, help="Steps on the source task.")
@click.option("--steps", type=click.IntRange(min=1), default=100, help="Steps of each target-task row.")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, help="Global batch size of every run.")
@click.option("--target-per-class", type=click.IntRange(min=2), default=30,
              help="Training images per target class (the validation split has 50 per class).")
@click.option("--seed", type=int, default=0, help="Seed of the generated images and of every run.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the experiments here (source, from-scratch, fine-tuned, fine-tuned-frozen) "
                   "[default: a temporary folder, removed].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON here.")
def benchmark_finetune_command(model, pretrain_steps, steps, batch_size, target_per_class, seed, workdir,
                               json_path):
    """Accuracy at equal steps on a small new task: trained from scratch, fine-tuned with --init-from, and
    fine-tuned with --freeze all-but-head. The source weights come from a generated 8-shape task trained
    first in the same run; the target task is 4 other shapes with a few dozen images per class."""
    from revnet.benchmarks.finetune import format_report, run_finetune_benchmark
    from revnet.common.fileio import atomic_write_json

    report = run_finetune_benchmark(model=model, pretrain_steps=pretrain_steps, steps=steps, batch_size=batch_size,
                                    target_per_class=target_per_class, seed=seed, workdir=workdir)
    if json_path:
        atomic_write_json(json_path, report)
    click.echo(format_report(report))


# ---------------------------------------------------------------------------------------------------
# export / serve / predict
# ---------------------------------------------------------------------------------------------------
@cli.command("export", preflight=lambda as_json, **options: ExportConfig(**options))
@click_options(ExportConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the full export.json record.")
def export_command(as_json, **options):
    """Export a trained experiment for serving (inference-only graph), checked for TF/ONNX parity."""
    config = ExportConfig(**options)   # checked already, before TensorFlow loaded (preflight)
    from revnet.serving.exporter import export

    record = export(config)
    if as_json:
        _print_json(record)
    else:
        click.echo(f"exported {record['name']} version {record['version']} to {record['path']}")
        if "onnx" in record:
            click.echo(f"onnx max abs probability difference vs TF: {record['onnx']['max_abs_probability_diff']:.3g}")
        int8 = record.get("onnx", {}).get("int8")
        if int8:
            click.echo(f"int8: top-1 agreement {int8['top1_agreement_with_float']:.4f} on "
                       f"{int8['evaluation_images']['count']} {int8['evaluation_images']['source']} images, "
                       f"{int8['speedup']:.2f}x float images/s at batch {int8['speed_batch']}")


@cli.command("serve", preflight=lambda **options: ServeConfig(**options))
@click_options(ServeConfig)
def serve_command(**options):
    """Serve exports over TF Serving's gRPC and REST APIs and the Open Inference Protocol (KServe v2), with
    health, reflection and Prometheus metrics: one model (--model-dir) or a TF Serving model config file."""
    config = ServeConfig(**options)   # checked already, before TensorFlow loaded (preflight)
    from revnet.serving.server import serve

    serve(config)


@cli.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--server", default="127.0.0.1:8500", help="HOST:PORT of a model server.")
@click.option("--model", default="", help="Model name (empty = the server's model, when it serves one).")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Model version [default: the highest served].")
@click.option("--label", default=None, help="Version label of the server's model config, e.g. stable or canary.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, help="Classes to print per image.")
@click.option("--timeout-seconds", type=click.FloatRange(min=0.1), default=30.0, help="Request deadline.")
@click.option("--tls-ca", default=None, type=click.Path(dir_okay=False), help="PEM CA certificate to connect with TLS.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=64,
              help="Files per request: any number of files goes as requests of this many (and at most 16 MB), "
                   "in order, printed as they are answered.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text (one list, at the end).")
def predict_command(images, server, model, version, label, top_k, timeout_seconds, tls_ca, batch_rows, as_json):
    """Send JPEG/PNG files to a server and print the top-k classes with probabilities per image."""
    from revnet.serving.client import format_prediction, predict_stream

    results = predict_stream(server=server, images=list(images), model=model, top_k=top_k,
                             timeout_seconds=timeout_seconds, tls_ca=tls_ca, batch_rows=batch_rows,
                             version=version, label=label)
    if as_json:
        _emit(list(results), True, None)
        return
    for result in results:
        click.echo(format_prediction(result))


@benchmark_group.command("serve")
@click.option("--model-dir", default=None, type=click.Path(file_okay=False),
              help="OUTPUT/NAME of an export with both formats (and model.int8.onnx for the int8 rows).")
@click.option("--experiment", default=None,
              help="Export this trained experiment (with --quantize int8) instead; default: a random revnet-38.")
@click.option("--workdir", default="./experiments", help="Folder that holds --experiment.")
@click.option("--requests-per-client", type=click.IntRange(min=1), default=None,
              help="Requests each client sends (default: enough for about 192 per configuration).")
@click.option("--concurrency", default="1,8,32", help="Comma-separated client counts.")
@click.option("--backends", default="onnx,tf", help="Comma-separated backends.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, help="Dynamic batching limit.")
@click.option("--batch-timeout-ms", type=click.FloatRange(min=0.1), default=5.0, help="Dynamic batching timeout.")
@click.option("--intra-op-threads", type=click.IntRange(min=0), default=0,
              help="The server's ONNX Runtime threads (0 = as `serve`: every core, less one for the gRPC "
                   "threads where there are more than 2).")
@click.option("--in-process-seconds", type=click.FloatRange(min=0.1), default=3.0,
              help="Time spent on each in-process (backend, batch) measurement.")
@click.option("--profile", is_flag=True, help="Add ONNX Runtime's per-operator times at batch 32 (fp32 and int8).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (rows, targets, profile, export) instead of tables.")
def benchmark_serve_command(model_dir, experiment, workdir, requests_per_client, concurrency, backends, max_batch_size,
                            batch_timeout_ms, intra_op_threads, in_process_seconds, profile, as_json):
    """In-process ONNX Runtime (fp32, int8) and TensorFlow at batch 1 and 32; loopback gRPC at batch 1 with
    each client count, dynamic batching off and on, both backends; the server's overhead; the targets."""
    from revnet.benchmarks.serve import format_report, run_serve_benchmark

    report = run_serve_benchmark(model_dir=model_dir, concurrency=[int(c) for c in concurrency.split(",")],
                                 backends=backends.split(","), requests_per_client=requests_per_client,
                                 max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                                 in_process_seconds=in_process_seconds, intra_op_threads=intra_op_threads,
                                 experiment=experiment, workdir=workdir if experiment else None, profile=profile)
    _emit(report, as_json, format_report)


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------
@cli.command("demo")
@click.option("--workdir", default="./demo",
              help="Folder for every artifact: raw archive, TFRecords, experiment, exports.")
@click.option("--model", default="revnet-38", help="CIFAR model to train (see `cli.py models`).")
@click.option("--steps", type=click.IntRange(min=1), default=300, help="Training steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Global batch size (split across replicas).")
@click.option("--cpu-replicas", type=click.IntRange(min=1), default=2, help="Logical CPU replicas for synchronous SGD.")
@click.option("--lr", type=float, default=0.05,
              help="Base learning rate (decayed at the paper's fractions of --steps).")
@click.option("--train-images", type=click.IntRange(min=10), default=3000, help="Generated training images.")
@click.option("--val-images", type=click.IntRange(min=10), default=600, help="Generated validation images.")
@click.option("--requests", type=click.IntRange(min=1), default=100, help="gRPC Predict requests to send.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=0.5,
              help="Exit non-zero unless validation and served accuracy reach this (chance is 0.1).")
@click.option("--skip-memory", is_flag=True, help="Skip the reversible-vs-autodiff memory measurement.")
@click.option("--memory-model", default="revnet-110",
              help="RevNet whose training-step memory is measured in both modes (deep enough to show the saving).")
@click.option("--overwrite", is_flag=True, help="Replace a finished demo in --workdir.")
@click.option("--seed", type=int, default=0, help="Seed for data generation, shuffling and initialisation.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
def demo_command(workdir, model, steps, batch_size, cpu_replicas, lr, train_images, val_images, requests,
                 min_accuracy, skip_memory, memory_model, overwrite, seed, as_json):
    """Run the whole pipeline offline on generated CIFAR-format images: Beam preprocessing, training
    on CPU replicas, evaluation, SavedModel + ONNX export, gRPC serving and Predict requests."""
    from revnet.common.devices import configure_cpu_replicas

    configure_cpu_replicas(cpu_replicas)
    from revnet.demo import format_summary, run_demo

    summary = run_demo(workdir=workdir, model=model, steps=steps, num_train=train_images, num_val=val_images,
                       batch_size=batch_size, cpu_replicas=cpu_replicas, learning_rate=lr, predict_requests=requests,
                       min_accuracy=min_accuracy, seed=seed, overwrite=overwrite, measure_memory=not skip_memory,
                       memory_model=memory_model)
    _emit(summary, as_json, format_summary)
    if not summary["passed"]:
        raise click.exceptions.Exit(1)


def main():
    cli(prog_name="revnet")


if __name__ == "__main__":
    cli(prog_name="cli.py")
