"""The README and the pages under docs/ cannot drift from the code: every fenced shell/python block is read, and

(a) every `from X import Y` / `import X` / `python -m X` it names must import (and Y must exist),
(b) every `python cli.py ...` / `revnet ...` command line must parse for real: the subcommand chain is
    resolved and the command's own parser runs on the arguments as shown (click's `make_context`, which
    neither runs the command nor its preflight check), so an unknown option, a bad choice or value, or a
    missing required option fails; a line that is exactly `cli.py CMD --help` is run with `--help`,
(c) the blocks marked `<!-- runnable -->` must run exactly as shown,
(d) every command and subcommand is shown somewhere, the README stays a front page (at most 300 lines),
    no page names machine paths, commit hashes or issue numbers, and every relative link resolves.
"""
import contextlib
import importlib
import os
import re
import shlex
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                              if name.endswith(".md"))
FENCE = re.compile(r"(<!-- runnable -->\s*\n)?```(bash|sh|shell|console|python)\n(.*?)```", re.S)
ANY_FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)
FROM_IMPORT = re.compile(r"\bfrom\s+([A-Za-z_][\w.]*)\s+import\s+([\w, ]+?)(?:\s+as\s+\w+)?\s*(?:[;\"'\n]|$)")
PLAIN_IMPORT = re.compile(r"(?:^|[;\"]\s*)import\s+([A-Za-z_][\w.]*)")
RUN_MODULE = re.compile(r"python\s+-m\s+([A-Za-z_][\w.]*)")
OUR_PACKAGES = ("benchmarks", "cli", "common", "demo", "models", "pipeline", "preprocess", "reversible", "serving",
                "train")
GLOBAL_OPTIONS = ("--debug", "-v", "--verbose")
README_MAX_LINES = 300
# A commit-hash-looking token: 7..40 lowercase hex digits with at least one letter and one digit.
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
ISSUE_NUMBER = re.compile(r"\bissues?\s+#?\d+", re.I)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return handle.read()


def _blocks():
    """(file, runnable, language, body) of every fenced shell/python block in README.md and docs/*.md."""
    return [(path, bool(marker), language, body)
            for path in DOCS for marker, language, body in FENCE.findall(_text(path))]


def _imports():
    found = set()
    for path, _, _, body in _blocks():
        for module, names in FROM_IMPORT.findall(body):
            found |= {(path, module, name.strip()) for name in names.split(",") if name.strip()}
        found |= {(path, module, None) for module in PLAIN_IMPORT.findall(body) + RUN_MODULE.findall(body)}
    return sorted(found, key=str)


def _command_lines():
    """(file, arguments after `cli.py` or `revnet`) of the shell blocks (continuations joined, comments
    dropped); arguments after `--` are kept, they are part of what the command receives."""
    lines = []
    for path, _, language, body in _blocks():
        if language == "python":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            command = []
            for token in tokens + ["&&"]:
                if token in ("&&", "||", ";", "|", "&"):
                    if command:
                        lines.append((path, command))
                    command = []
                else:
                    command.append(token)
    ours = []
    for path, command in lines:
        for index, token in enumerate(command):
            if token.endswith("cli.py") or (token == "revnet" and index == 0):
                ours.append((path, _without_redirections(command[index + 1:])))
                break
    return ours


def _without_redirections(tokens):
    """`> /dev/null`, `2>&1`, `>out.json`, `< in`: the shell's, not the command's."""
    args, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif re.fullmatch(r"\d*(>>?|<)(&\d+)?", token):
            skip = not token.endswith(tuple("0123456789"))
        elif not re.fullmatch(r"\d*(>>?|<)\S+", token):
            args.append(token)
    return args


def _is_help_line(args):
    """`cli.py CMD [SUB] --help`: shown to point at the help text, parsed only with it."""
    return bool(args) and args[-1] in ("--help", "-h") and not any(arg.startswith("-") for arg in args[:-1])


def _parse(args):
    """Resolve the subcommand chain of `args` and run the leaf command's parser on the rest, as click does
    before invoking; returns (command path, leaf command, its context's params, whether that context passes
    unknown options through). Raises click.UsageError (NoSuchOption, BadParameter, MissingParameter, no
    such command) for a line that would not parse. `make_context` runs neither the command nor its preflight."""
    from revnet.cli import cli

    names, command, rest = ["cli.py"], cli, list(args)
    with contextlib.ExitStack() as stack:
        ctx = stack.enter_context(cli.make_context("cli.py", rest, resilient_parsing=False))
        while isinstance(command, click.Group):
            protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
            rest = list(protected) + list(ctx.args)
            if not rest:
                raise click.UsageError(f"{' '.join(names)} needs a subcommand", ctx=ctx)
            name, command, rest = command.resolve_command(ctx, rest)
            names.append(name)
            ctx = stack.enter_context(command.make_context(name, list(rest), parent=ctx, resilient_parsing=False))
        return names, command, dict(ctx.params), ctx.ignore_unknown_options


@pytest.fixture
def nothing_runs(monkeypatch):
    """Every command's callback and preflight check replaced by a recorder: parsing must run neither."""
    from revnet.cli import cli

    calls = []

    def walk(command, path):
        if command.callback is not None:
            monkeypatch.setattr(command, "callback", lambda *a, _p=path, **k: calls.append(("callback", _p)))
        if getattr(command, "preflight", None) is not None:
            monkeypatch.setattr(command, "preflight", lambda *a, _p=path, **k: calls.append(("preflight", _p)))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "cli.py")
    return calls


@pytest.mark.parametrize("path,module,name", _imports(), ids=lambda value: str(value))
def test_docs_name_only_existing_modules_and_functions(path, module, name):
    assert module.split(".")[0] not in OUR_PACKAGES, f"{path} imports {module!r}; the import root is revnet"
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"{path} imports {name!r} from {module}, which has no such name"


def test_docs_show_imports_and_commands_at_all():
    assert _imports(), "the docs show no imports at all; did the block pattern break?"
    assert len(_command_lines()) > 20, "the docs show hardly any command lines; did the block pattern break?"


@pytest.mark.parametrize("path,args", _command_lines(), ids=lambda value: (value if isinstance(value, str) else
                                                                            " ".join(value))[:80])
def test_docs_command_line_parses(path, args, nothing_runs):
    shown = f"{path}: cli.py {' '.join(args)}"
    if _is_help_line(args):
        from revnet.cli import cli

        result = CliRunner().invoke(cli, args, prog_name="cli.py")
        assert result.exit_code == 0 and "Usage:" in result.output, f"{shown}\n{result.output}"
        return
    try:
        names, command, params, passes_unknown_options = _parse(args)
    except click.exceptions.Exit as stopped:  # an eager option such as --help in the middle of a line
        pytest.fail(f"{shown}\nstopped the parser (exit {stopped.exit_code}); show it as `cli.py CMD --help`")
    except click.ClickException as error:
        pytest.fail(f"{shown}\ndoes not parse: {error.format_message()}")
    assert not nothing_runs, f"{shown}\nparsing ran {nothing_runs}"
    # A command that passes unknown options through (preprocess: Beam's options) must receive exactly what
    # follows `--`; anything else landing there is an option the command does not have.
    if passes_unknown_options:
        passed = list(args[args.index("--") + 1:]) if "--" in args else []
        for param in command.params:
            if isinstance(param, click.Argument) and param.nargs == -1:
                assert list(params[param.name]) == passed, (
                    f"{shown}\n{' '.join(names)} has no option(s) "
                    f"{[arg for arg in params[param.name] if arg not in passed]} (Beam's options go after `--`)")


def test_docs_show_every_command():
    from revnet.cli import cli

    shown = set()
    for _, args in _command_lines():
        args = [arg for arg in args if arg not in GLOBAL_OPTIONS]
        shown |= {" ".join(args[:depth]) for depth in (1, 2)}
    wanted = set()
    for name, command in cli.commands.items():
        wanted.add(name)
        wanted |= {f"{name} {sub}" for sub in getattr(command, "commands", {})}
    assert wanted <= shown, f"commands README.md and docs/*.md never show: {sorted(wanted - shown)}"
    assert {"benchmark memory", "benchmark preprocess", "benchmark train", "benchmark serve"} <= shown


def test_readme_is_a_front_page():
    lines = _text("README.md").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail to a page under docs/"


@pytest.mark.parametrize("path", DOCS)
def test_docs_name_no_machine_paths_commits_or_issues(path):
    text = _text(path)
    prose = ANY_FENCE.sub(lambda block: block.group(0) if re.match(r" *```\w", block.group(0)) else "", text)
    problems = [f"machine path: {line.strip()[:100]}" for line in text.splitlines() if "/work/" in line]
    problems += [f"commit hash {match.group(0)!r}" for match in COMMIT_HASH.finditer(prose)]
    problems += [f"issue number {match.group(0)!r}" for match in ISSUE_NUMBER.finditer(text)]
    assert not problems, f"{path}:\n" + "\n".join(problems)


def _anchors(path):
    """GitHub's anchors for the headings of a page (outside code blocks)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", ANY_FENCE.sub("", _text(path)), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("path", DOCS)
def test_docs_relative_links_resolve(path):
    broken = []
    for target in LINK.findall(ANY_FENCE.sub("", _text(path))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(os.path.join(ROOT, linked)):
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.endswith(".md") and anchor not in _anchors(linked):
            broken.append(f"{target}: {linked} has no heading #{anchor}")
    assert not broken, f"{path}:\n" + "\n".join(broken)


@pytest.mark.parametrize("path,block", [(path, body) for path, runnable, _, body in _blocks() if runnable],
                         ids=lambda value: value if value.endswith(".md") else value.strip().splitlines()[0][:60])
def test_runnable_docs_block_succeeds(path, block, tmp_path):
    """A runnable shell block runs in bash (-euo pipefail), a runnable python block in this interpreter."""
    env = dict(os.environ, README_TMP=str(tmp_path))
    language = next(language for page, runnable, language, body in _blocks() if page == path and body == block)
    command = [sys.executable, "-c", block] if language == "python" else ["bash", "-euo", "pipefail", "-c", block]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (f"{path}:\n{block}\nstdout:\n{result.stdout[-2000:]}\n"
                                    f"stderr:\n{result.stderr[-2000:]}")
