"""ONNX Runtime sessions tuned for serving, and the optimised model cached beside each ONNX file.

One place decides the session options (the exporter's parity check, the server and the benchmark all
use it), so what export.json records is what the server runs:
- graph optimisation ORT_ENABLE_ALL (constant folding, Conv+bias+ReLU fusion, the NCHWc layout
  transformer that runs convolutions in the CPU's blocked layout);
- intra-op threads = the cores left after those reserved for the gRPC/batcher threads (at least 1;
  one core is reserved on machines with more than two, see `serving_reserved_cores`);
  one inter-op thread, sequential execution (a CNN is one chain of ops);
- no spinning: idle ORT threads otherwise busy-wait on the cores the gRPC threads need. (`DEDICATED`,
  for a process that does nothing but inference, such as the in-process benchmark rows, spins and
  takes every core: waking sleeping threads costs about 0.5 ms per batch-1 run here.)

`model.onnx` is optimised once, at export, into `model.optimized.onnx` with a key file
(`model.optimized.json`: source size and SHA-256, ORT version, level, CPU flags). The NCHWc output is
specific to the CPU and ORT version it was made with, so a session loads the cache (optimisation off,
so it starts faster) only when the key matches, and otherwise optimises the original in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Dict, Optional, Tuple

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

LEVELS = ("disable", "basic", "extended", "all")
CACHE_SUFFIX = ".optimized.onnx"
CACHE_KEY_SUFFIX = ".optimized.json"
def serving_reserved_cores() -> int:
    """Cores kept free for the gRPC threads (request parsing, response building) and the batcher.

    Measured on 2 cores (`benchmark serve`, 32 batched clients): those threads used about 0.6 core at
    950 requests/s, and keeping a whole core for them cut throughput from 943 to 701 images/s. So one
    core is kept only where there are more than two.
    """
    return 1 if available_cores() > 2 else 0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads_for(reserved_cores: int) -> int:
    """ORT intra-op threads: the cores left after `reserved_cores`, at least one."""
    return max(1, available_cores() - reserved_cores)


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    level: str = "all"
    intra_op_threads: int = 0          # 0: intra_op_threads_for(reserved_cores)
    reserved_cores: Optional[int] = None  # None: serving_reserved_cores()
    allow_spinning: bool = False
    use_cache: bool = True

    def resolved_threads(self) -> int:
        """The intra-op thread count this config gives on this machine."""
        if self.intra_op_threads < 0:
            raise UserError(f"--intra-op-threads must be 0 (auto) or positive, got {self.intra_op_threads}")
        return self.intra_op_threads or intra_op_threads_for(self.resolved_reserved_cores())

    def resolved_reserved_cores(self) -> int:
        return serving_reserved_cores() if self.reserved_cores is None else self.reserved_cores

    def to_json(self) -> Dict:
        return {"graph_optimization_level": f"ORT_ENABLE_{self.level.upper()}" if self.level != "disable"
                else "ORT_DISABLE_ALL", "intra_op_num_threads": self.resolved_threads(), "inter_op_num_threads": 1,
                "execution_mode": "ORT_SEQUENTIAL", "intra_op.allow_spinning": self.allow_spinning,
                "reserved_cores": self.resolved_reserved_cores(), "cores": available_cores()}


# A process that does nothing but inference: every core, and threads that spin between ops.
DEDICATED = SessionConfig(reserved_cores=0, allow_spinning=True)


def _options(config: SessionConfig, level: str):
    import onnxruntime

    if level not in LEVELS:
        raise UserError(f"unknown graph optimisation level {level!r}; expected one of {', '.join(LEVELS)}")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = {
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = config.resolved_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    return options


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return hashlib.sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:16]
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_paths(model_path: str) -> Tuple[str, str]:
    stem = model_path[: -len(".onnx")] if model_path.endswith(".onnx") else model_path
    return stem + CACHE_SUFFIX, stem + CACHE_KEY_SUFFIX


def cache_key(model_path: str, level: str) -> Dict:
    import onnxruntime

    return {"source_bytes": os.path.getsize(model_path), "source_sha256": _sha256(model_path),
            "onnxruntime": onnxruntime.__version__, "level": level, "cpu_flags": _cpu_flags()}


def write_optimized_cache(model_path: str, config: SessionConfig = SessionConfig()) -> Dict:
    """Optimise `model_path` at the config's level into the cache beside it (atomically); returns the key."""
    import onnxruntime

    cached, key_path = cache_paths(model_path)
    folder = os.path.dirname(os.path.abspath(model_path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
    os.close(handle)
    try:
        options = _options(config, config.level)
        options.optimized_model_filepath = temporary
        onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        os.replace(temporary, cached)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    key = cache_key(model_path, config.level)
    from revnet.common.fileio import atomic_write_json

    atomic_write_json(key_path, key)
    return key


def _usable_cache(model_path: str, level: str) -> Tuple[Optional[str], str]:
    """(cached model path or None, why not)."""
    cached, key_path = cache_paths(model_path)
    if not (os.path.exists(cached) and os.path.exists(key_path)):
        return None, "no cached optimised model"
    try:
        with open(key_path, "r", encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError) as error:
        return None, f"unreadable cache key ({error})"
    current = cache_key(model_path, level)
    changed = sorted(name for name in current if recorded.get(name) != current[name])
    return (cached, "") if not changed else (None, f"cache made with another {', '.join(changed)}")


def create_session(model_path: str, config: SessionConfig = SessionConfig(), providers=("CPUExecutionProvider",),
                   profile_prefix: Optional[str] = None):
    """(session, record): an ORT session with the serving options; `record` says what it runs and why.
    `profile_prefix` turns on ORT's profiler (`session.end_profiling()` returns the JSON trace's path)."""
    import onnxruntime

    started = time.perf_counter()
    source, level, reason = model_path, config.level, ""
    # The cache holds CPU-provider kernels (NCHWc); a GPU provider must optimise for itself.
    if config.use_cache and list(providers) == ["CPUExecutionProvider"]:
        cached, reason = _usable_cache(model_path, config.level)
        if cached:
            source, level = cached, "disable"
    options = _options(config, level)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    session = onnxruntime.InferenceSession(source, options, providers=list(providers))
    record = {**config.to_json(), "model": os.path.basename(source), "cache": "used" if source != model_path
              else (reason or "off"), "providers": session.get_providers(),
              "load_seconds": round(time.perf_counter() - started, 3)}
    log.info("onnx session for %s: %s", os.path.basename(model_path), json.dumps(record, sort_keys=True))
    return session, record
