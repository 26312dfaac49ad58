"""Packages import downwards only, at module level and inside functions alike:

    common <- models, preprocess <- pipeline <- train <- serving <- benchmarks <- demo <- cli

(models and preprocess are independent: data knows nothing of models, models nothing of data), and
nothing imports a package by its bare name: everything lives under the one import root `revnet`.
"""
import ast
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("common", "reversible", "models", "preprocess", "pipeline", "train", "serving", "benchmarks")
MODULES = ("demo", "cli")
ALLOWED = {
    "common": {"common"},
    "reversible": {"common", "reversible"},
    "models": {"common", "reversible", "models"},
    "preprocess": {"common", "preprocess"},
    "pipeline": {"common", "preprocess", "pipeline"},
    "train": {"common", "reversible", "models", "preprocess", "train"},
    "serving": {"common", "reversible", "models", "preprocess", "train", "serving"},
    "benchmarks": {"common", "reversible", "models", "preprocess", "pipeline", "train", "serving", "benchmarks"},
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


def _module_graph(root=None):
    """revnet module -> the revnet modules it imports (module level and inside functions alike)."""
    root = root or ROOT
    paths = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("tests", "build") and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py") and name != "__main__.py":
                paths[_module_name_under(root, os.path.join(dirpath, name))] = os.path.join(dirpath, name)
    graph = {}
    for module, path in paths.items():
        targets = set()
        for name in _imported_modules(path):
            # `from revnet.a import b` names module revnet.a.b or a name in revnet.a: take the longest module.
            while name and name not in paths:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _module_name_under(root, path):
    relative = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    if relative == "__init__":
        return "revnet"
    return "revnet." + (relative[: -len(".__init__")] if relative.endswith(".__init__") else relative)


def _cycles(graph):
    """One import cycle per strongly connected group of modules (Tarjan), each as a list of modules."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    # A package's __init__ re-exporting its own modules is not a circle the reader has to untangle.
    graph = {module: {t for t in targets if not module.startswith(t + ".")}
             for module, targets in _module_graph().items()}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_function_level_circle(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "registry.py").write_text("def build():\n    from revnet.models import revnet\n")
    (tmp_path / "models" / "revnet.py").write_text("from revnet.models.registry import build\n")
    assert _cycles(_module_graph(str(tmp_path))) == [["revnet.models.registry", "revnet.models.revnet"]]


def _duplicated_basenames(paths):
    seen = {}
    for path in paths:
        name = os.path.basename(path)
        if name != "__init__.py":
            seen.setdefault(name, []).append(os.path.relpath(path, ROOT))
    return {name: where for name, where in seen.items() if len(where) > 1}


def test_no_two_modules_share_a_basename():
    """A name like config.py in three packages hides what each holds; tracebacks and editors show basenames."""
    assert _duplicated_basenames(path for _, path in _sources()) == {}


def test_the_basename_check_sees_a_duplicate():
    paths = [os.path.join(ROOT, "train", "config.py"), os.path.join(ROOT, "serving", "config.py"),
             os.path.join(ROOT, "train", "__init__.py"), os.path.join(ROOT, "serving", "__init__.py")]
    assert list(_duplicated_basenames(paths)) == ["config.py"]
