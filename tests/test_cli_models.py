"""The CLI's model listing and its handling of bad input, run as a user would run it."""
import json

import pytest
from testkit.cli_runner import run_cli


def test_models_json_lists_every_model_with_the_documented_keys():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert {"revnet-38", "revnet-104", "resnet-50"} <= names
    for row in rows:
        assert {"name", "params", "input_size", "num_classes"} <= set(row)
    by_name = {row["name"]: row for row in rows}
    assert by_name["revnet-104"]["input_size"] == 224 and by_name["revnet-38"]["num_classes"] == 10
    assert "cudart" not in result.stderr and "absl" not in result.stderr


@pytest.mark.parametrize("args, expected", [
    (["benchmark", "memory", "--models", "revnet-39"], "unknown model 'revnet-39'"),
    (["benchmark", "memory", "--models", "revnet-38", "--modes", "fast"], "unknown mode 'fast'"),
    (["benchmark", "memory", "--batch-size", "0"], "--batch-size"),
])
def test_bad_input_gets_one_line_and_nonzero_exit(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3
