"""`cli.py demo` end to end with small settings: every stage runs for real, offline."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--steps", "8", "--batch-size", "16", "--train-images", "160", "--val-images", "40", "--requests", "8",
         "--min-accuracy", "0", "--skip-memory"]


def run_demo(workdir, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "demo", "--workdir", str(workdir), *SMALL,
                           *extra], capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    result = run_demo(workdir, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, json.loads(result.stdout)


def test_demo_runs_every_stage_and_reports_it(demo_run):
    workdir, summary = demo_run
    for split, expected in (("train", 160), ("validation", 40)):
        counts = summary["data"][split]
        assert counts["read"] == expected == counts["written"] + counts["rejected"]
    assert summary["training"]["steps"] == 8 and summary["training"]["cpu_replicas"] == 2
    assert summary["evaluation"]["examples"] == 40
    assert 0.0 <= summary["evaluation"]["top1"] <= 1.0
    assert summary["onnx_max_abs_probability_diff"] <= 1e-4
    assert summary["serving"]["requests"] == 8 and summary["serving"]["p50_ms"] > 0
    artifacts = summary["artifacts"]
    assert os.path.exists(artifacts["raw_archive"]) and artifacts["raw_archive"].endswith("cifar-10-python.tar.gz")
    assert os.path.exists(os.path.join(artifacts["tfrecords"], "metadata.json"))
    assert os.path.exists(os.path.join(artifacts["export"], "model.onnx"))
    assert os.path.exists(os.path.join(artifacts["export"], "saved_model.pb"))
    assert json.load(open(artifacts["summary"]))["passed"] is True


def test_demo_refuses_to_overwrite_a_finished_run(demo_run):
    workdir, _ = demo_run
    result = run_demo(workdir)
    assert result.returncode == 2
    assert "--overwrite" in result.stderr and "Traceback" not in result.stderr
