"""Run one benchmark measurement in a fresh Python process, so no measurement inherits another's state."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Callable, Dict, Optional


def run_worker(module: str, spec: Dict, label: str, extra_env: Optional[Dict[str, str]] = None,
               timeout_seconds: float = 1800) -> Dict:
    """`python -m MODULE --worker SPEC_JSON`; returns the JSON row it prints last."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(extra_env or {}))
    process = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                             capture_output=True, text=True, env=env, timeout=timeout_seconds)
    if process.returncode != 0:
        tail = (process.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{label} failed: {tail}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def worker_main(measure: Callable[[Dict], Dict], command: str) -> None:
    """The `--worker SPEC_JSON` entry of a benchmark module: print one JSON row on stdout."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        logging.disable(logging.WARNING)
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        sys.exit(f"usage: python -m revnet.benchmarks.{command} --worker SPEC_JSON (use `cli.py benchmark {command}`)")
