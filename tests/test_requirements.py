"""Every package the code imports is declared in setup.cfg, directly or as a requirement of a declared one.

A fresh install gets exactly the closure of what setup.cfg declares, so a package that is only present
by accident on a developer's machine (onnxruntime's quantization once imported sympy, which nothing
declared) must fail here, in CI, and not for a user. Two checks:

- static: every top-level module imported anywhere in the package (or the tests) comes from a
  distribution in the closure of the declared requirements (the tests may also use the test extra);
- at run time: a fresh interpreter in which every distribution outside that closure is hidden imports
  every module of the package and runs what imports more lazily (ONNX Runtime's quantization
  preprocessing, used by `export --quantize int8`); it must succeed. Hiding, rather than listing what
  was loaded, keeps optional imports (a library that uses IPython only when it is there) from failing
  the check on a machine that happens to have them.
"""
import ast
import configparser
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Optional extras: the code imports them only behind revnet.common.optional.require (a one-line error).
OPTIONAL_EXTRAS = ("dask",)


def _declared():
    """(install_requires, {extra: [requirements]}) as written in setup.cfg."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))

    def lines(text):
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    extras = {name: lines(text) for name, text in parser["options.extras_require"].items()}
    return lines(parser["options"]["install_requires"]), extras


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements):
    """Canonical names of the distributions a fresh install of `requirements` gets (markers evaluated)."""
    seen, pending = set(), [(Requirement(text), ()) for text in requirements]
    while pending:
        requirement, _ = pending.pop()
        name = _canonical(requirement.name)
        key = (name, tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: the import checks below report what is missing
        for text in requires:
            child = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append((child, ()))
    return {name for name, _ in seen}


def _distributions_of(module: str):
    return [_canonical(name) for name in metadata.packages_distributions().get(module, [])]


def _top_level_imports(paths):
    found = {}
    for path in paths:
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                found.setdefault(name.split(".")[0], os.path.relpath(path, ROOT))
    return found


def _python_files(under_tests: bool):
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("fixtures", "build")]
        in_tests = os.path.relpath(dirpath, ROOT).split(os.sep)[0] == "tests"
        if in_tests == under_tests:
            yield from (os.path.join(dirpath, name) for name in filenames if name.endswith(".py"))


def _local_modules():
    """Names that resolve to our own files (the package root, the tests' helper package and modules)."""
    names = {"revnet"}
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, "tests")):
        names |= {name[:-3] for name in filenames if name.endswith(".py")}
        if "__init__.py" in filenames:
            names.add(os.path.basename(dirpath))
    return names


def _undeclared(modules, allowed):
    problems = []
    for module, where in sorted(modules.items()):
        if module in sys.stdlib_module_names or module in _local_modules() or module.startswith("_"):
            continue
        distributions = _distributions_of(module)
        if not distributions:
            problems.append(f"{module} (imported by {where}) is not installed: declare its package in setup.cfg")
        elif not set(distributions) & allowed:
            problems.append(f"{module} (imported by {where}) comes from {', '.join(distributions)}, which setup.cfg "
                            f"does not declare, directly or through a declared requirement")
    return problems


def test_the_package_imports_only_declared_packages():
    install, extras = _declared()
    allowed = closure(install + [r for extra in OPTIONAL_EXTRAS for r in extras[extra]])
    assert _undeclared(_top_level_imports(_python_files(under_tests=False)), allowed) == []


def test_the_tests_import_only_declared_packages():
    install, extras = _declared()
    allowed = closure(install + extras["test"])
    assert _undeclared(_top_level_imports(_python_files(under_tests=True)), allowed) == []


# A fresh interpreter in which every distribution outside the declared closure is hidden, as in a fresh
# install: a library that imports one only when it happens to be present (apache_beam and IPython, botocore)
# gets the ImportError it handles, and one that needs it fails, naming it.
_HIDE_UNDECLARED = r"""
import importlib.abc, importlib.metadata, json, os, sys
_allowed = set(json.loads(os.environ["REVNET_ALLOWED_DISTRIBUTIONS"]))
_owners = {name: {d.lower().replace("_", "-").replace(".", "-") for d in dists}
           for name, dists in importlib.metadata.packages_distributions().items()}
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        owners = _owners.get(name) if "." not in name else None
        if owners and not owners & _allowed and name != "revnet":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: {', '.join(sorted(owners))} is not "
                                      f"declared in setup.cfg, directly or through a declared requirement)", name=name)
        return None
sys.meta_path.insert(0, _Hide())
"""

_LOAD_EVERYTHING = r"""
import os, pkgutil
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import revnet
for module in pkgutil.walk_packages(revnet.__path__, "revnet."):
    if module.name != "revnet.__main__" and ".tests." not in module.name and not module.name.startswith("revnet.tests"):
        __import__(module.name)
"""

# What --quantize int8 runs first: ONNX Runtime's preprocessing imports its symbolic shape inference lazily.
_QUANTIZE = r"""
import os, tempfile
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process
weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
folder = tempfile.mkdtemp()
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), os.path.join(folder, "m.onnx"))
quant_pre_process(os.path.join(folder, "m.onnx"), os.path.join(folder, "p.onnx"))
"""


def _run_with_only(allowed, script):
    environment = dict(os.environ, REVNET_ALLOWED_DISTRIBUTIONS=json.dumps(sorted(allowed)))
    return subprocess.run([sys.executable, "-c", _HIDE_UNDECLARED + script], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(ROOT), env=environment)


def _runtime_allowed():
    install, extras = _declared()
    return closure(install + [r for extra in OPTIONAL_EXTRAS for r in extras[extra]])


@pytest.mark.slow
def test_what_the_package_loads_at_run_time_is_declared():
    result = _run_with_only(_runtime_allowed(), _LOAD_EVERYTHING + _QUANTIZE)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_the_run_time_check_fails_on_a_needed_undeclared_package():
    # ONNX Runtime's shape inference needs sympy; without its declaration the run must fail and name it.
    result = _run_with_only(_runtime_allowed() - {"sympy"}, _QUANTIZE)
    assert result.returncode != 0 and "sympy" in result.stderr, result.stderr[-3000:]


def test_the_check_finds_an_undeclared_package():
    # psutil is installed (the test extra brings it through dask's distributed) but the bare install does not.
    install, _ = _declared()
    problems = _undeclared({"psutil": "x.py"}, closure(install))
    assert len(problems) == 1 and "psutil" in problems[0]
    assert _undeclared({"no_such_module_anywhere": "x.py"}, closure(install))
