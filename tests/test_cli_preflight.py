"""Mistakes in the arguments are reported before TensorFlow is imported (it takes seconds): click's own
checks and each command's TensorFlow-free preflight run first."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the CLI as `python cli.py ...` does, then says whether TensorFlow got imported.
RUN = ("import runpy, sys\nsys.argv = ['cli.py'] + sys.argv[1:]\ncode = None\n"
       "try:\n    runpy.run_path('cli.py', run_name='__main__')\n"
       "except SystemExit as done:\n    code = done.code\nprint('exit', code, 'tensorflow' in sys.modules)\n")


@pytest.mark.parametrize("args, fragment", [
    (["train", "--model", "resnet-999", "--data", "d"], "unknown model 'resnet-999'"),
    (["train", "--model", "resnet-32", "--steps", "-5"], "Invalid value for '--steps'"),
    (["train", "--model", "resnet-32", "--data", "no/such/folder"], "data folder 'no/such/folder' does not exist"),
    (["train", "--model", "resnet-32"], "--data is required for a new experiment"),
    (["train", "--model", "resnet-32", "--data", ".", "--id", "../x"], "must be a plain folder name"),
    (["eval", "--id", "no-such-experiment"], "no experiment 'no-such-experiment'"),
    (["import-weights", "--checkpoint", "no/ckpt", "--model", "revnet-38", "--id", "a"], "no checkpoint at"),
])
def test_argument_errors_come_before_tensorflow(args, fragment, tmp_path):
    result = subprocess.run([sys.executable, "-c", RUN, *args, "--workdir", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "exit 2 False", result.stdout + result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["export", "--id", ".hidden", "--output", "out"], "must be a single folder name"),
    (["export", "--id", "a", "--output", "out", "--format", "savedmodel", "--quantize", "int8"],
     "--quantize int8 applies to ONNX"),
    (["serve", "--model-dir", "m", "--max-request-rows", "2"], "must be at least --max-batch-size"),
    (["serve", "--model-dir", "m", "--model-config-file", "c"], "not both"),
    (["serve", "--tls-cert", "c.pem", "--model-dir", "m"], "TLS needs both"),
])
def test_export_and_serve_argument_errors_come_before_tensorflow(args, fragment):
    result = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "exit 2 False", result.stdout + result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_a_good_command_still_imports_tensorflow_quietly(tmp_path):
    result = subprocess.run([sys.executable, "-c", RUN, "models", "--json"], capture_output=True, text=True,
                            timeout=240, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "exit None True", result.stderr
    assert "cudart" not in result.stderr and "absl" not in result.stderr
