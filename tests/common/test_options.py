"""Flags generated from a config dataclass: types, bounds, choices, defaults and help come from the field."""
import dataclasses
from typing import Optional, Tuple

import click
from click.testing import CliRunner

from revnet.common.options import click_options, flag_of, given, option


@dataclasses.dataclass(frozen=True)
class Example:
    port: int = dataclasses.field(default=8500, metadata=option("gRPC port.", min=0))
    ratio: float = dataclasses.field(default=0.5, metadata=option("A fraction.", min=0, max=1))
    backend: str = dataclasses.field(default="onnx", metadata=option("Backend.", choices=("onnx", "tf")))
    jit: Optional[bool] = dataclasses.field(default=None, metadata=option("XLA.", negatable=True))
    overwrite: bool = dataclasses.field(default=False, metadata=option("Replace."))
    sizes: Tuple[int, ...] = dataclasses.field(default=(1, 2), metadata=option("Sizes.", flag="--batch-sizes"))
    name: Optional[str] = dataclasses.field(default=None, metadata=option("Name.", click_default=None))
    internal: int = 3  # no option metadata: not a flag


@dataclasses.dataclass(frozen=True)
class WithRequired:
    output: str = dataclasses.field(metadata=option("Where to write."))
    level: int = dataclasses.field(default=1, metadata=option("Level."))
    size: int = dataclasses.field(default=224, metadata=option("Size.", choices=(32, 224)))


def _command():
    @click.command()
    @click_options(Example)
    def command(**options):
        click.echo(repr(Example(**options)))
    return command


def test_flags_take_their_types_defaults_and_help_from_the_fields():
    result = CliRunner().invoke(_command(), [])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(Example())
    result = CliRunner().invoke(_command(), ["--port", "0", "--ratio", "1", "--backend", "tf", "--no-jit",
                                             "--overwrite", "--batch-sizes", "32,128", "--name", "x"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(Example(port=0, ratio=1.0, backend="tf", jit=False, overwrite=True,
                                                 sizes=(32, 128), name="x"))
    help_text = CliRunner().invoke(_command(), ["--help"]).output
    assert "gRPC port." in help_text and "[default: 8500" in help_text and "--internal" not in help_text
    assert "--jit / --no-jit" in help_text and "[default: 1,2]" in help_text


def test_bad_values_are_refused_by_the_parser():
    for args in (["--port", "-1"], ["--ratio", "2"], ["--backend", "x"], ["--batch-sizes", "a,b"], ["--port", "1.5"]):
        result = CliRunner().invoke(_command(), args)
        assert result.exit_code == 2, (args, result.output)


def test_flag_spellings_and_given_options():
    assert flag_of(Example, "sizes") == "--batch-sizes" and flag_of(Example, "port") == "--port"
    assert given({"a": None, "b": 0, "c": False}) == {"b": 0, "c": False}


def test_a_field_without_a_default_is_a_required_flag():
    @click.command()
    @click_options(WithRequired)
    def command(**options):
        click.echo(repr(WithRequired(**options)))

    missing = CliRunner().invoke(command, ["--level", "2"])
    assert missing.exit_code == 2 and "Missing option '--output'" in missing.output
    given_output = CliRunner().invoke(command, ["--output", "x", "--size", "32"])
    assert given_output.exit_code == 0 and given_output.output.strip() == repr(WithRequired(output="x", size=32))
