"""Which Beam runner executes the graph, with which options, and what it needs around it.

    local   Beam's FnApiRunner in-process (the DirectRunner without its Prism detour, which downloads a
            binary); `--workers N` fans the shards out to N forked processes (pipeline/beam_pipeline.py).
            Beam's own modes are used as given when `--direct_running_mode`/`--direct_num_workers` are.
    dask    Beam's DaskRunner on a dask.distributed cluster: `--dask-address`/`--dask_client_address`, or a
            LocalCluster of `--workers` processes on 127.0.0.1 started here and closed afterwards.
    remote  any other runner (Dataflow, Flink, Spark...): our code goes to the workers as a wheel passed
            with --extra_package (pipeline/packaging.py), unless --setup_file is given.

Beam registers the Dask options only when its Dask runner module is imported, and does not know the
short name `DaskRunner`; both are handled here. Its Dask runner (Beam 2.77) has further gaps the graph
avoids: file sources become no-ops (ReadFromText fails with "'NoneType' object has no attribute 'map'"),
only the last leaf of a graph is computed, tagged outputs are not separated, what finish_bundle emits
is dropped, metrics raise NotImplementedError, and the client is left open after the job.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

from revnet.common.errors import UserError
from revnet.common.optional import require
from revnet.pipeline.preprocess_config import RUNNERS

log = logging.getLogger(__name__)

_LOCAL_NAMES = ("direct", "directrunner")
_DASK_NAMES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner")


@dataclass
class RunnerChoice:
    """The checked request: which kind of runner, and the Beam arguments as given."""
    kind: str  # "local", "dask" or "remote"
    args: List[str]
    dask_address: Optional[str] = None


@dataclass
class Execution:
    runner: object  # a runner instance, or None for Beam to resolve --runner
    options: object  # PipelineOptions
    args: List[str]  # the effective Beam arguments (recorded in metadata.json)
    local_processes: int = 1  # forked shard workers inside EncodeShards (in-process local runner only)
    description: str = ""
    in_process: bool = False  # one in-process Beam worker: nothing for Create to spread


def _arg_value(args: Sequence[str], name: str) -> Optional[str]:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _without(args: Sequence[str], name: str) -> List[str]:
    """`args` minus the option `name` in either form (--name=value, --name value)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def _has(args: Sequence[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args for name in names)


def _import_dask_runner() -> None:
    require("distributed", "dask", "the Dask runner (--runner dask)")
    require("apache_beam.runners.dask.dask_runner", "dask", "the Dask runner (--runner dask)")  # registers DaskOptions
    # Importing distributed sets its loggers to INFO (every scheduler event); its warnings still show.
    logging.getLogger("distributed").setLevel(logging.WARNING)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def refuse_unknown_beam_args(args: Sequence[str]) -> None:
    """Beam only logs and drops arguments it does not know; a mistyped option must not vanish silently."""
    if not args:
        return  # parsing every registered Beam option costs tens of milliseconds
    from apache_beam.options.pipeline_options import PipelineOptions

    capture, beam_log = _Capture(), logging.getLogger("apache_beam.options.pipeline_options")
    beam_log.addHandler(capture)
    try:
        PipelineOptions(list(args)).get_all_options()
    finally:
        beam_log.removeHandler(capture)
    unknown = [m.split(":", 1)[1].strip() for m in capture.messages if "unparseable args" in m]
    if unknown:
        raise UserError(f"unknown option(s) {unknown[0]}: preprocess options go before `--`, Beam pipeline "
                        f"options (--runner, --project, --direct_num_workers...) after it")


def choose_runner(beam_args: Sequence[str], runner: str = "direct", dask_address: Optional[str] = None) -> RunnerChoice:
    """Check the runner request (our --runner/--dask-address and Beam's own options) before any work."""
    args = list(beam_args)
    if runner not in RUNNERS:
        raise UserError(f"unknown --runner {runner!r}; expected one of: {', '.join(RUNNERS)} (other Beam runners "
                        f"go after `--`, e.g. -- --runner=DataflowRunner)")
    beam_runner = _arg_value(args, "--runner")
    named_dask = beam_runner is not None and beam_runner.lower() in _DASK_NAMES
    if runner == "dask" and beam_runner is not None and not named_dask:
        raise UserError(f"--runner dask conflicts with the Beam option --runner={beam_runner}; give one of them")
    dask = runner == "dask" or named_dask or any(arg.startswith("--dask_") for arg in args)
    if dask_address and not dask:
        raise UserError("--dask-address needs --runner dask")
    if dask:
        _import_dask_runner()
    refuse_unknown_beam_args(args)
    if dask:
        given = _arg_value(args, "--dask_client_address")
        if dask_address and given:
            raise UserError("give the scheduler once: --dask-address or the Beam option --dask_client_address")
        address = dask_address or given
        if address and "://" not in address:
            address = f"tcp://{address}"
        return RunnerChoice("dask", _without(args, "--dask_client_address"), address)
    if beam_runner is None or beam_runner.lower() in _LOCAL_NAMES:
        return RunnerChoice("local", args)
    return RunnerChoice("remote", args)


def _local(args: List[str], workers: int) -> Execution:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    processes = 1
    if not _has(args, "--direct_num_workers", "--direct_running_mode"):
        # One in-process Beam worker; the shards go to `workers` forked processes (see beam_pipeline.py).
        args += ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
        processes = workers
    elif not _has(args, "--direct_num_workers"):
        args.append(f"--direct_num_workers={workers}")
    elif not _has(args, "--direct_running_mode"):
        many = int(_arg_value(args, "--direct_num_workers")) > 1
        args.append(f"--direct_running_mode={'multi_processing' if many else 'in_memory'}")
    if not _has(args, "--default_sdk_harness_log_level"):
        args.append("--default_sdk_harness_log_level=WARNING")  # worker processes' INFO chatter off stderr
    # Worker start-up notices ("No semi_persistent_directory found") are not for the user; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    mode = _arg_value(args, "--direct_running_mode")
    description = (f"DirectRunner in_memory, {processes} forked shard worker(s)" if processes > 1 else
                   f"DirectRunner {mode}, {_arg_value(args, '--direct_num_workers')} worker(s)")
    return Execution(FnApiRunner(), PipelineOptions(args), args, processes, description, mode == "in_memory")


@contextlib.contextmanager
def _dask(choice: RunnerChoice, workers: int, num_tasks: int) -> Iterator[Execution]:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    args, cluster = list(choice.args), None
    address = choice.dask_address
    if not address and not _has(args, "--dask_scheduler_file"):
        import distributed

        # Beam would start a default LocalCluster (dashboard on, every interface); ours is loopback-only.
        with warnings.catch_warnings():
            # Without a dashboard the scheduler still serves /health on 127.0.0.1, by default on port
            # 8787, and warns when another cluster holds that port before taking a free one.
            warnings.filterwarnings("ignore", message="Port 8787 is already in use")
            # preload: our package's import filters Beam's import-time GCP notice out of worker stderr.
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, host="127.0.0.1", preload=["revnet.pipeline"])
        address = cluster.scheduler_address
        log.info("started a local Dask cluster of %d worker process(es) at %s", workers, address)
    if address:
        args.append(f"--dask_client_address={address}")
    if not _has(args, "--dask_npartitions", "--dask_partition_size"):
        args.append(f"--dask_npartitions={num_tasks}")  # Beam's default packs up to 128 elements per task
    where = "a local cluster" if cluster else address or "the scheduler file's cluster"
    try:
        yield Execution(DaskRunner(), PipelineOptions(args), args, 1, f"DaskRunner on {where}")
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _remote(args: List[str]) -> Iterator[Execution]:
    from apache_beam.options.pipeline_options import PipelineOptions

    from revnet.pipeline.packaging import build_worker_wheel

    with tempfile.TemporaryDirectory(prefix="revnet-worker-package-") as folder:
        if not _has(args, "--setup_file"):
            args.append(f"--extra_package={build_worker_wheel(folder)}")
        yield Execution(None, PipelineOptions(args), args, 1, _arg_value(args, "--runner") or "")


@contextlib.contextmanager
def execution(choice: RunnerChoice, workers: int, num_tasks: int) -> Iterator[Execution]:
    """The runner, its options and whatever must live as long as the job (a local cluster, a wheel)."""
    if choice.kind == "local":
        yield _local(list(choice.args), workers)
    elif choice.kind == "dask":
        with _dask(choice, workers, num_tasks) as running:
            yield running
    else:
        with _remote(list(choice.args)) as running:
            yield running


def run_to_completion(pipeline, choice: RunnerChoice) -> None:
    """Run and wait; a failed job on a cluster becomes one clear error (and the Dask client is closed)."""
    result = None
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:  # noqa: BLE001 - re-raised with what the user needs to know
        if choice.kind != "dask":
            raise
        detail = " ".join(str(error).split())  # Dask's messages span lines; the CLI shows only the first
        detail = detail if len(detail) <= 400 else detail[:400] + "..."
        raise RuntimeError(f"the Dask job failed ({type(error).__name__}: {detail}); nothing was published") \
            from error
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
