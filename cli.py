"""Command line for the RevNet pipeline: `python cli.py COMMAND --help` (or the `revnet` console script).

This file only parses options and calls one function per command; each command is a tested Python
function in its package. Bad input (UserError) becomes a one-line message and exit code 2; any other
failure a one-line message and exit code 1. `--debug` shows the traceback instead.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class ErrorHandlingGroup(click.Group):
    def main(self, *args, **kwargs):
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, standalone_mode=False, **{k: v for k, v in kwargs.items()
                                                                   if k != "standalone_mode"})
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - the one place errors become messages
            from common.errors import UserError

            if _debug_requested():
                raise
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if isinstance(error, UserError):
                click.echo(f"error: {message}", err=True)
                sys.exit(2)
            click.echo(f"error: {type(error).__name__}: {message} (run with --debug for the traceback)", err=True)
            sys.exit(1)


def _debug_requested() -> bool:
    return "--debug" in sys.argv[1:2] or os.environ.get("REVNET_DEBUG") == "1"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "tensorflow", "apache_beam", "tf2onnx", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (must come first).")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logging on stderr.")
def cli(debug, verbose):
    """Reversible Residual Networks (Gomez et al., NIPS 2017) on TensorFlow 2: preprocess, train,
    evaluate, export, serve.

    Results go to stdout, logs to stderr. Run `COMMAND --help` for each command's options.
    """
    if debug:
        os.environ["REVNET_DEBUG"] = "1"
    _setup_logging(verbose)
    if not debug and not any(arg in ("-h", "--help") for arg in sys.argv):
        from common.devices import quiet_tensorflow

        quiet_tensorflow()


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------
@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models_command(as_json):
    """List the model zoo: name, dataset family, blocks, channels, parameters, input size."""
    from models.summary import model_table, format_model_table

    rows = model_table()
    if as_json:
        _print_json(rows)
    else:
        click.echo(format_model_table(rows))


# ---------------------------------------------------------------------------------------------------
# benchmark (one subcommand per benchmark module in benchmarks/)
# ---------------------------------------------------------------------------------------------------
@cli.group("benchmark")
def benchmark_group():
    """Measure memory, speed and throughput; every figure in the README comes from here."""


@benchmark_group.command("memory")
@click.option("--models", "model_names", default="resnet-32,resnet-110,revnet-38,revnet-110,revnet-164",
              help="Comma-separated model names. RevNets run in both modes; ResNets in autodiff.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Training batch size.")
@click.option("--steps", type=click.IntRange(min=1), default=3, help="Measured steps per model (after one warm-up step).")
@click.option("--modes", default="reversible,autodiff", help="RevNet modes to measure.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of peak memory against depth here.")
def benchmark_memory_command(model_names, batch_size, steps, modes, json_path, plot_path):
    """Peak memory and step time of a full training step (inside tf.function), each model and mode
    in a fresh subprocess, with the reversible-vs-autodiff gradient error for RevNets."""
    from benchmarks.memory import format_rows, run_memory_benchmark

    rows = run_memory_benchmark(model_names.split(","), batch_size, steps, modes.split(","),
                                json_path=json_path, plot_path=plot_path)
    click.echo(format_rows(rows))


# ---------------------------------------------------------------------------------------------------
# preprocess (issue: Beam preprocessing)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# train / eval (issue: distributed trainer)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# export / serve / predict (issue: serving)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# demo (issue: end to end)
# ---------------------------------------------------------------------------------------------------


def main():
    cli(prog_name="revnet")


if __name__ == "__main__":
    cli(prog_name="cli.py")
