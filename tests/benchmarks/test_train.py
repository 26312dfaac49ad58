"""`benchmark train`: the plan holds every row issue 15 asks for, each kind of row measures something real
(run here in-process on tiny settings; the CLI runs each in a fresh process), the table prints the
ratios the targets name, and a full tiny run through the CLI (slow) leaves no process behind."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from revnet.benchmarks import train as bench
from revnet.cli import cli
from revnet.common.errors import UserError

MODELS = ("resnet-32", "resnet-110", "revnet-38")


def test_the_plan_has_every_row_per_model_and_batch():
    specs = bench.plan(list(MODELS), [32, 128], steps=4, jit_steps=2, cifar_dir="C", imagenet_dir="I")
    labels = {(s["model"], s["batch_size"], bench.describe(s)) for s in specs}
    for model in MODELS:
        for batch in (32, 128):
            bare = "bare step reversible" if model.startswith("revnet") else "bare step"
            wanted = {bare, bare + ", --jit", "trainer", "trainer, 2 replicas"}
            wanted |= {"bare step autodiff", "bare step autodiff, --jit"} if model.startswith("revnet") else \
                {"keras fit", "keras fit, jit_compile=auto"}
            if (model, batch) == ("resnet-32", 32):
                wanted |= {"cli.py train, steps 8-24", "keras fit, steps 8-24"}
            assert wanted <= {label for m, b, label in labels if (m, b) == (model, batch)}, (model, batch)
    assert {("cifar input", 32, "local"), ("cifar input", 128, "local")} <= labels
    assert {label for m, _, label in labels if m == "imagenet input"} == {
        "local", "local, 1 thread", "local, decode whole JPEG", "tf.data service, 2 workers", "local, 1 core",
        "tf.data service, 2 workers, 1 core each"}
    deep = [s for s in specs if s.get("overrides")]
    assert {(s["mode"], bool(s.get("jit"))) for s in deep} == {(m, j) for m in ("reversible", "autodiff")
                                                              for j in (False, True)}


def test_bad_axes_are_user_errors():
    for text in ("32,abc", "31", "", "0"):
        with pytest.raises(UserError, match="--batch-sizes"):
            bench.parse_batch_sizes(text)
    with pytest.raises(UserError, match="not revnet-110"):
        bench.run_train_benchmark(["revnet-110"], [8], steps=2, jit_steps=1, imagenet=False)
    result = CliRunner().invoke(cli, ["benchmark", "train", "--batch-sizes", "7"])
    assert result.exit_code == 2 and "--batch-sizes" in result.output


@pytest.fixture(scope="module")
def tiny_rows(toy_data, tmp_path_factory):
    """One row of every kind, measured in this process on tiny settings (2 steps, batch 4)."""
    base = {"batch_size": 4, "replicas": 1, "steps": 2, "warmup": 1}
    specs = [dict(base, kind="bare", model="resnet-32", mode="autodiff", overrides={"units_per_stage": [1, 1, 1]}),
             dict(base, kind="bare", model="revnet-38", mode="reversible", overrides={"units_per_stage": [2, 1, 1]},
                  jit=True),
             dict(base, kind="trainer", model="resnet-32", data=toy_data, warmup=2),
             dict(base, kind="keras", model="resnet-32", data=toy_data, keras_jit=False),
             dict(base, kind="pipeline", model="cifar input", data=toy_data, augmentation="cifar", image_size=32)]
    imagenet = str(tmp_path_factory.mktemp("imagenet"))
    bench.write_imagenet_size_records(imagenet, count=48)
    specs.append({"kind": "pipeline", "model": "imagenet input", "data": imagenet, "augmentation": "imagenet",
                  "image_size": 224, "batch_size": 8, "steps": 2, "warmup": 1, "threads": 1})
    return [bench.measure(spec) for spec in specs]


def test_every_kind_of_row_measures_a_positive_rate(tiny_rows):
    for row in tiny_rows:
        assert row["examples_per_second"] > 0 and row["step_seconds"] > 0, row
        assert abs(row["examples_per_second"] * row["step_seconds"] - row["batch_size"]) < 1e-6 * row["batch_size"]
    bare, bare_jit, trainer, keras, cifar, imagenet = tiny_rows
    assert bare["peak_bytes"] > 0 and bare_jit["peak_bytes"] > 0 and bare_jit["first_step_seconds"] > 0
    assert keras["keras_jit_resolved"] is False
    assert imagenet["cores_used"]["client"] > 0 and imagenet["images_per_cpu_second"] > 0


def test_the_table_prints_the_ratios_the_targets_name(tiny_rows):
    bare, _, trainer, keras, _, imagenet = tiny_rows
    bare = dict(bare, overrides=None)   # the full-size bare row the trainer's ratio refers to
    table = bench.format_rows([bare, trainer, keras, imagenet])
    line = next(line for line in table.splitlines() if " trainer " in line)
    expected_bare = trainer["examples_per_second"] / bare["examples_per_second"]
    expected_keras = trainer["examples_per_second"] / keras["examples_per_second"]
    assert f"{expected_bare:.2f}x of bare step" in line and f"{expected_keras:.2f}x of keras fit" in line
    assert "cores busy per process" in table and "client" in table


# Runs COMMAND as a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so any process it leaves behind is
# re-parented here instead of to init; prints the command lines of those left running, then ends them. One
# that has already exited (a zombie, state Z, with an empty command line: it died with its parent and was
# re-parented here before anyone reaped it) is not left behind.
_REAPER = """
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1)
result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=900)
time.sleep(1)
left = []
for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
        state, parent = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z":
            left.append(open(f"/proc/{entry}/cmdline").read().replace("\\0", " "))
            os.kill(int(entry), signal.SIGKILL)
    except OSError:
        pass
print(json.dumps({"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr[-3000:],
                  "left": left}))
"""


@pytest.mark.slow  # 11 fresh processes (and 3 more for the data service)
def test_a_tiny_full_run_through_the_cli_leaves_no_process_behind(tmp_path):
    command = [sys.executable, "-m", "revnet.cli", "benchmark", "train", "--models", "resnet-32",
               "--batch-sizes", "4", "--steps", "2", "--jit-steps", "1", "--imagenet-batches", "2",
               "--json", str(tmp_path / "rows.json")]
    outcome = json.loads(subprocess.run([sys.executable, "-c", _REAPER] + command, capture_output=True, text=True,
                                        timeout=960).stdout)
    assert outcome["returncode"] == 0, outcome["stderr"]
    assert outcome["left"] == []
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert "of bare step" in outcome["stdout"] and "of local" in outcome["stdout"]   # the table
    labels = {bench.describe(row) for row in rows}
    assert {"bare step", "bare step, --jit", "trainer", "trainer, 2 replicas", "keras fit",
            "keras fit, jit_compile=auto", "local", "tf.data service, 2 workers", "cli.py train, steps 4-12",
            "keras fit, steps 4-12"} <= labels
    cli_line = next(line for line in outcome["stdout"].splitlines() if "cli.py train" in line)
    assert "of keras fit" in cli_line and "of trainer" in cli_line
    service = next(row for row in rows if row.get("service_workers"))
    assert set(service["cores_used"]) == {"client", "dispatcher", "worker1", "worker2"}
    # The core-limited pair: the local pipeline on one core, each worker on a core of its own.
    assert {"local, 1 core", "tf.data service, 2 workers, 1 core each"} <= labels
    limited = {bench.describe(row): row for row in rows if row.get("core_limit")}
    assert limited["local, 1 core"]["cores_used"]["client"] <= 1.1
    workers = limited["tf.data service, 2 workers, 1 core each"]["cores_used"]
    assert workers["worker1"] <= 1.1 and workers["worker2"] <= 1.1
    assert "of local, 1 core" in outcome["stdout"]
    assert all(row["examples_per_second"] > 0 for row in rows)
