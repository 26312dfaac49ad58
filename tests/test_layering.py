"""Packages import downwards only, at module level and inside functions alike:

    common <- models, preprocess <- pipeline <- train <- serving <- benchmarks <- demo <- cli

(models and preprocess are independent: data knows nothing of models, models nothing of data), and
nothing imports a package by its bare name: everything lives under the one import root `revnet`.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "models", "preprocess", "pipeline", "train", "serving", "benchmarks")
MODULES = ("demo", "cli")
ALLOWED = {
    "common": {"common"},
    "models": {"common", "models"},
    "preprocess": {"common", "preprocess"},
    "pipeline": {"common", "preprocess", "pipeline"},
    "train": {"common", "models", "preprocess", "train"},
    "serving": {"common", "models", "preprocess", "train", "serving"},
    "benchmarks": {"common", "models", "preprocess", "pipeline", "train", "serving", "benchmarks"},
    "demo": set(PACKAGES),
    "cli": set(PACKAGES) | {"demo"},
}


def _sources():
    for package in PACKAGES:
        for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
            for name in filenames:
                if name.endswith(".py"):
                    yield package, os.path.join(dirpath, name)
    for module in MODULES:
        yield module, os.path.join(ROOT, f"{module}.py")


def _imported_names(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "revnet":
                for alias in node.names:
                    yield node.lineno, f"revnet.{alias.name}"
            else:
                yield node.lineno, node.module


def _violations():
    found = []
    for owner, path in _sources():
        where = os.path.relpath(path, ROOT)
        for lineno, name in _imported_names(path):
            parts = name.split(".")
            if parts[0] in PACKAGES + MODULES:
                found.append(f"{where}:{lineno} imports {name!r} by its bare name; use revnet.{name}")
            elif parts[0] == "revnet" and len(parts) > 1 and parts[1] not in ALLOWED[owner]:
                found.append(f"{where}:{lineno} ({owner}) imports {name!r}, which is not below it")
    return found


def test_packages_import_downwards_only_under_one_root():
    assert _violations() == []


def test_the_check_sees_function_level_imports(tmp_path, monkeypatch):
    bad = tmp_path / "models"
    bad.mkdir()
    (bad / "x.py").write_text("def f():\n    from revnet.train import trainer\n    import serving\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    monkeypatch.setattr(__import__(__name__), "MODULES", ())
    assert len(_violations()) == 2
