"""`cli.py preprocess` and `cli.py benchmark preprocess` as a user runs them, including the real
multi-process DirectRunner (2 workers) end to end."""
import json
import os
import pickle
import subprocess
import sys

import pytest

from revnet.benchmarks.preprocess import format_rows, run_preprocess_benchmark
from revnet.common.errors import UserError
from testkit.preprocess_test_helpers import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _one_line_error(result, expected):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


def test_multiprocess_direct_runner_end_to_end_with_beam_args(cifar10_archive, tmp_path):
    output = tmp_path / "cifar10"
    result = run_cli("preprocess", "cifar-10", "--input", cifar10_archive, "--output", str(output), "--workers", "2",
                     "--train-shards", "3", "--val-shards", "1", "--json", "--", "--direct_num_workers=2",
                     "--direct_running_mode=multi_processing")
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads(result.stdout)
    assert metadata["complete"] is True and metadata["options"]["workers"] == 2
    assert "--direct_running_mode=multi_processing" in metadata["options"]["beam_args"]
    assert {s: (c["read"], c["written"], c["rejected"]) for s, c in metadata["splits"].items()} == \
        {"train": (250, 250, 0), "validation": (60, 60, 0)}
    assert len(read_records(str(output), "train")) == 250
    assert "preprocess: 4/4 shards, 310/310 images" in result.stderr  # the progress line
    assert "Traceback" not in result.stderr
    # The same finished dataset again: a one-line error, nothing touched.
    _one_line_error(run_cli("preprocess", "cifar-10", "--input", cifar10_archive, "--output", str(output)),
                    "already holds a finished dataset; pass --overwrite")


def test_a_local_run_does_not_import_ipython_or_tensorflow(cifar10_archive, tmp_path):
    """Beam's "are we in IPython?" probe imports IPython (about 0.15 s of CPU per run); the pipeline
    answers it without the import. TensorFlow is never needed to write records."""
    code = ("import sys; from revnet.pipeline import PreprocessConfig, run_preprocess; "
            f"run_preprocess(PreprocessConfig('cifar-10', {str(tmp_path / 'out')!r}, input_path={cifar10_archive!r}, "
            "train_shards=2, val_shards=1, workers=2)); "
            "print(sorted(m for m in ('IPython', 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_preprocess_flags_are_the_config_fields():
    """One flag per PreprocessConfig option field, with the field's default, so no option is spelled twice."""
    from revnet.cli import cli
    from revnet.common.options import option_fields
    from revnet.pipeline import PreprocessConfig

    params = {param.name: param for param in cli.commands["preprocess"].params}
    fields = option_fields(PreprocessConfig)
    assert {field.name for field in fields} <= set(params)
    assert set(params) - {field.name for field in fields} == {"dataset", "as_json", "beam_args"}
    for field in fields:
        if field.name != "output_dir":
            assert params[field.name].default == field.default, field.name
    assert params["output_dir"].required


def test_hostile_archive_is_refused_on_the_command_line(tmp_path):
    import io
    import tarfile

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps({b"label_names": Payload()}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    result = run_cli("preprocess", "cifar-10", "--input", str(tmp_path / "cifar-10-python.tar.gz"), "--output",
                     str(tmp_path / "out"))
    _one_line_error(result, "refusing to load posix.system")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_missing_archive_is_a_one_line_error(tmp_path):
    _one_line_error(run_cli("preprocess", "cifar-10", "--input", str(tmp_path / "nope.tar.gz"), "--output",
                            str(tmp_path / "out")), "does not exist; expected the official cifar-10-python.tar.gz")
    assert not (tmp_path / "out").exists()


HEAVY_MODULES = {"apache_beam", "distributed", "dask", "tensorflow", "PIL"}


@pytest.mark.parametrize("args, expected", [
    (["imagenett", "--output", "OUT"], "'imagenett' is not one of"),
    (["imagenet", "--input", "MISSING", "--output", "OUT", "--runner", "dask"], "does not exist; expected a folder"),
    (["imagenet", "--input", "MISSING", "--output", "OUT", "--", "--runner=FlinkRunner"], "does not exist"),
    (["cifar-10", "--input", "MISSING", "--output", "OUT", "--runner", "dask"],
     "does not exist; expected the official"),
    (["cifar-10", "--output", "OUT", "--val-labels", "v.csv", "--runner", "dask"], "--val-labels v.csv only applies"),
    (["folder", "--input", "MISSING", "--output", "OUT", "--runner", "dask"], "does not exist or is not a folder"),
], ids=["unknown-dataset", "imagenet-dask", "imagenet-beam-args", "cifar-dask", "option-of-another-dataset",
        "folder-dask"])
def test_argument_errors_come_before_anything_heavy_is_imported(tmp_path, args, expected):
    args = [str(tmp_path / arg) if arg in ("MISSING", "OUT") else arg for arg in args]
    result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "cli.py"), "preprocess", *args],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "click" in imported  # the importtime listing is there to look at
    assert not imported & HEAVY_MODULES
    assert not (tmp_path / "OUT").exists()


def test_benchmark_rows_compare_the_loop_and_beam(tmp_path):
    rows = run_preprocess_benchmark(num_images=25, worker_counts="1,2", seed=0, runners="direct")
    assert [(r["method"], r["workers"]) for r in rows] == \
        [("python loop", 1), ("beam DirectRunner", 1), ("beam DirectRunner", 2)]
    for row in rows:
        assert row["images"] == row["written"] + row["rejected"] and row["rejected"] == 2
        assert row["images_per_second"] == pytest.approx(row["images"] / row["seconds"], rel=0.01)
        # Each ratio is the loop's time over this row's time (not a row divided by itself).
        assert row["vs_loop"] == pytest.approx(rows[0]["seconds"] / row["seconds"], rel=0.01)
        assert row["cpu_main"] > 0
    assert rows[1]["seconds"] != rows[0]["seconds"] and rows[1]["vs_loop"] != 1.0
    assert rows[2]["cpu_children"] > 0  # the shards were written by forked worker processes
    assert "images/s" in format_rows(rows)
    with pytest.raises(UserError, match="comma-separated integers"):
        run_preprocess_benchmark(25, "1,two")
    with pytest.raises(UserError, match="--runners takes"):
        run_preprocess_benchmark(25, "1", runners="spark")
