"""The README cannot drift from the code: every fenced shell/python block is read, and

(a) every `from X import Y` / `import X` / `python -m X` it names must import (and Y must exist),
(b) every `python cli.py ...` / `revnet ...` command line must parse with `--help` appended (so each
    subcommand and option it shows exists),
(c) the blocks marked `<!-- runnable -->` must run exactly as shown.
"""
import importlib
import os
import re
import shlex
import subprocess

import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"(<!-- runnable -->\s*\n)?```(bash|sh|shell|console|python)\n(.*?)```", re.S)
FROM_IMPORT = re.compile(r"\bfrom\s+([A-Za-z_][\w.]*)\s+import\s+([\w, ]+?)(?:\s+as\s+\w+)?\s*(?:[;\"'\n]|$)")
PLAIN_IMPORT = re.compile(r"(?:^|[;\"]\s*)import\s+([A-Za-z_][\w.]*)")
RUN_MODULE = re.compile(r"python\s+-m\s+([A-Za-z_][\w.]*)")
OUR_PACKAGES = ("benchmarks", "cli", "common", "demo", "models", "pipeline", "preprocess", "serving", "train")


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return [(bool(marker), language, body) for marker, language, body in FENCE.findall(handle.read())]


def _imports():
    found = set()
    for _, _, body in _blocks():
        for module, names in FROM_IMPORT.findall(body):
            found |= {(module, name.strip()) for name in names.split(",") if name.strip()}
        found |= {(module, None) for module in PLAIN_IMPORT.findall(body) + RUN_MODULE.findall(body)}
    return sorted(found, key=str)


def _command_lines():
    """Argument lists after `cli.py` or `revnet` in the shell blocks (continuations joined, comments dropped)."""
    lines = []
    for _, language, body in _blocks():
        if language == "python":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            command = []
            for token in tokens + ["&&"]:
                if token in ("&&", "||", ";", "|"):
                    if command:
                        lines.append(command)
                    command = []
                else:
                    command.append(token)
    ours = []
    for command in lines:
        for index, token in enumerate(command):
            if token.endswith("cli.py") or (token == "revnet" and index == 0):
                args = command[index + 1:]
                ours.append(args[:args.index("--")] if "--" in args else args)
                break
    return ours


def test_readme_names_only_existing_modules_and_functions():
    assert _imports(), "the README shows no imports at all; did the block pattern break?"
    for module, name in _imports():
        assert module.split(".")[0] not in OUR_PACKAGES, f"README imports {module!r}; the import root is revnet"
        imported = importlib.import_module(module)
        if name is not None:
            assert hasattr(imported, name), f"README imports {name!r} from {module}, which has no such name"


@pytest.mark.parametrize("args", _command_lines(), ids=lambda args: " ".join(args)[:70])
def test_readme_command_line_parses(args):
    from revnet.cli import cli

    result = CliRunner().invoke(cli, args + ["--help"], prog_name="cli.py")
    assert result.exit_code == 0 and "Usage:" in result.output, f"cli.py {' '.join(args)}\n{result.output}"


def test_readme_shows_every_command():
    from revnet.cli import cli

    shown = {args[0] for args in _command_lines() if args}
    assert set(cli.commands) <= shown, f"commands the README never shows: {sorted(set(cli.commands) - shown)}"


@pytest.mark.parametrize("block", [body for runnable, _, body in _blocks() if runnable],
                         ids=lambda block: block.strip().splitlines()[0][:60])
def test_runnable_readme_block_succeeds(block, tmp_path):
    env = dict(os.environ, README_TMP=str(tmp_path))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, f"{block}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
