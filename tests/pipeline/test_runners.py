"""Runner choice: Beam's Dask options and names, conflicting requests, and our code shipped to remote
workers as a wheel without TensorFlow (checked without running a remote job)."""
import zipfile

import pytest

from revnet.common.errors import UserError
from revnet.pipeline import PreprocessConfig, run_preprocess, runners


@pytest.mark.parametrize("args, runner, address, expected", [
    ([], "direct", None, ("local", [], None)),
    (["--direct_num_workers=2"], "direct", None, ("local", ["--direct_num_workers=2"], None)),
    ([], "dask", "127.0.0.1:8786", ("dask", [], "tcp://127.0.0.1:8786")),
    (["--runner=DaskRunner", "--dask_client_address", "tcp://h:1"], "direct", None,
     ("dask", ["--runner=DaskRunner"], "tcp://h:1")),
    (["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"], "direct", None,
     ("dask", ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"], None)),
    (["--runner=FlinkRunner"], "direct", None, ("remote", ["--runner=FlinkRunner"], None)),
])
def test_runner_choice(args, runner, address, expected):
    choice = runners.choose_runner(args, runner, address)
    assert (choice.kind, choice.args, choice.dask_address) == expected


@pytest.mark.parametrize("args, runner, address, message", [
    (["--runner=FlinkRunner"], "dask", None, "--runner dask conflicts with the Beam option --runner=FlinkRunner"),
    ([], "direct", "h:1", "--dask-address needs --runner dask"),
    (["--dask_client_address=tcp://a:1"], "dask", "b:2", "give the scheduler once"),
    (["--dask_clinet_address=x"], "dask", None, r"unknown option\(s\) \['--dask_clinet_address=x'\]"),
    ([], "spark", None, "unknown --runner 'spark'"),
])
def test_wrong_runner_requests_are_user_errors(args, runner, address, message):
    with pytest.raises(UserError, match=message):
        runners.choose_runner(args, runner, address)


def test_a_remote_runner_gets_our_code_as_a_wheel_without_tensorflow(cifar10_archive, tmp_path, monkeypatch):
    seen = {}

    def instead_of_running(pipeline, choice):
        from apache_beam.options.pipeline_options import SetupOptions

        packages = pipeline.options.view_as(SetupOptions).extra_packages
        seen["packages"] = packages
        with zipfile.ZipFile(packages[0]) as wheel:
            seen["names"] = wheel.namelist()
            seen["metadata"] = wheel.read(next(n for n in seen["names"] if n.endswith("/METADATA"))).decode()
        raise RuntimeError("a remote job is not run in a test")

    monkeypatch.setattr(runners, "run_to_completion", instead_of_running)
    with pytest.raises(RuntimeError, match="not run in a test"):
        run_preprocess(PreprocessConfig("cifar-10", str(tmp_path / "out"), input_path=cifar10_archive, train_shards=2,
                                        val_shards=1,
                                        beam_args=["--runner=FlinkRunner", "--flink_master=localhost:8081"]))
    assert len(seen["packages"]) == 1 and seen["packages"][0].endswith(".whl")
    for module in ("revnet/__init__.py", "revnet/pipeline/shards.py", "revnet/pipeline/beam_pipeline.py",
                   "revnet/preprocess/tfrecord.py", "revnet/preprocess/images.py", "revnet/common/storage.py",
                   "revnet/preprocess/sources/cifar.py"):
        assert module in seen["names"]
    assert not any(name.startswith(("revnet/train/", "revnet/models/", "revnet/serving/")) for name in seen["names"])
    requirements = [line.split(":", 1)[1].strip() for line in seen["metadata"].splitlines()
                    if line.startswith("Requires-Dist:")]
    assert requirements == ["pillow", "numpy<2.5", "google-crc32c"]
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_user_setup_file_replaces_the_wheel(tmp_path):
    choice = runners.choose_runner(["--runner=FlinkRunner", f"--setup_file={tmp_path}/setup.py"])
    with runners.execution(choice, workers=1, num_tasks=2) as execution:
        assert not any(arg.startswith("--extra_package") for arg in execution.args)


def test_the_dask_runner_without_its_extra_is_one_line_naming_the_install(cifar10_archive, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from revnet.cli import cli

    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # what a missing package looks like
    result = CliRunner().invoke(cli, ["preprocess", "cifar-10", "--input", cifar10_archive,
                                      "--output", str(tmp_path / "out"), "--runner", "dask"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: the Dask runner (--runner dask) needs the optional package "
                                     "'distributed', which is not installed; install it with: "
                                     "pip install 'revnet-pipeline[dask]'")


def test_a_module_missing_from_a_partial_install_is_one_line(monkeypatch):
    from click.testing import CliRunner

    from revnet.cli import cli

    monkeypatch.setitem(__import__("sys").modules, "revnet.models.summary", None)
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: the Python module 'revnet.models.summary' is not installed, but this command needs it; reinstall "
        "the project with its requirements: pip install 'revnet-pipeline' (or pip install -e . in a clone)"]
