"""The Beam graph: one element per output shard, one step that writes it.

    Create(task names) -> [Reshuffle, inside Create] -> EncodeShards (read, decode, check, encode, write
                                                        one whole shard; its summary goes to _done/)

The driver (pipeline/plan.py) has already fixed every record's shard and order, so the graph carries
only task names and needs no GroupByKey, side input, tagged output or file source: the subset of Beam
that every runner executes the same way, Beam's Dask runner included (which, in Beam 2.77, turns
file sources into nothing, computes only the last leaf of a graph, mixes tagged outputs and drops what
finish_bundle emits; see pipeline/runners.py).

On the in-process local runner, EncodeShards can fan the bundle's shards out to forked worker
processes: Beam's own multi_processing mode starts a full SDK harness per worker (about 0.8 s of CPU
each here) and moves every element through gRPC, which costs more than it saves below ~10^4 images.
"""
from __future__ import annotations

import functools
import multiprocessing
import sys
from typing import Iterator, List, Sequence

import apache_beam as beam
from apache_beam.utils import interactive_utils

from revnet.pipeline import shards


def _answer_the_ipython_probe_without_importing_it() -> None:
    """Beam asks "are we in IPython?" by importing IPython (with prompt_toolkit, jedi and traitlets:
    about 0.15 s of CPU, half of a local job's fixed cost) when a pipeline is built and run. A process
    that has not imported IPython is not an IPython session, so answer that without the import; the
    modules that bound Beam's probe by name get the same answer."""
    probe = interactive_utils.is_in_ipython

    def is_in_ipython() -> bool:
        return "IPython" in sys.modules and probe()

    for module in list(sys.modules.values()):
        if getattr(module, "is_in_ipython", None) is probe:
            module.is_in_ipython = is_in_ipython


_answer_the_ipython_probe_without_importing_it()


def _fork_context():
    # fork starts a worker in milliseconds with everything already imported; elsewhere fall back to spawn.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def encode_in_processes(work_dir: str, names: Sequence[str], processes: int) -> Iterator[dict]:
    """Summaries of the given tasks, written by `processes` forked workers taking one shard at a time."""
    with _fork_context().Pool(min(processes, len(names))) as pool:
        yield from pool.imap_unordered(functools.partial(shards.encode_shard, work_dir), names, chunksize=1)


class EncodeShards(beam.DoFn):
    """A task name -> its shard file and summary (which is also emitted, for runners that want a sink).

    With `local_processes` > 1 the tasks of a bundle are collected and written by that many forked
    processes when the bundle finishes; use it only on the in-process local runner (one bundle holds
    every task there; Beam's Dask runner drops output emitted by finish_bundle).
    """

    def __init__(self, work_dir: str, local_processes: int = 1):
        self.work_dir, self.local_processes = work_dir, local_processes

    def start_bundle(self):
        self.pending: List[str] = []

    def process(self, name: str):
        if self.local_processes > 1:
            self.pending.append(name)
            return
        yield shards.encode_shard(self.work_dir, name)

    def finish_bundle(self):
        if not self.pending:
            return
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        for summary in encode_in_processes(self.work_dir, self.pending, self.local_processes):
            yield WindowedValue(summary, MIN_TIMESTAMP, [GlobalWindow()])
        self.pending = []


def build(pipeline: beam.Pipeline, work_dir: str, task_names: Sequence[str], local_processes: int = 1,
          distribute: bool = True) -> None:
    """`distribute`: let Create reshuffle the tasks over the runner's workers (pointless in-process)."""
    (pipeline
     | "ShardTasks" >> beam.Create(list(task_names), reshuffle=distribute)
     | "EncodeShards" >> beam.ParDo(EncodeShards(work_dir, local_processes)))
