"""`--init-from`: start a new experiment from another's weights (fine-tuning onto new classes).

SOURCE is an experiment id (under --workdir), a folder or checkpoint prefix of ours (an experiment, its
`checkpoints/` or `best/` folder, or `.../ckpt-N`), or a checkpoint of the original TF1 code (a prefix, a
folder with a `checkpoint` state file, or a release .tar.gz), read through the original's name mapping.

Every weight whose name and shape fit is loaded (moving statistics included). The classifier (the head's
dense kernel and bias) is re-initialised when the class count differs. A shape mismatch anywhere else is
an error naming the weights, unless `skip_mismatched` asks to keep their fresh initial values. Weights the
new model has and the source lacks keep their initial values; source tensors the model has no use for
(optimizer slots, counters, other weights) are ignored. The result is a table of what was loaded,
re-initialised, kept and ignored, saved as WORKDIR/ID/init_from.json.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models.original_names import OBJECT_GRAPH_KEY
from revnet.train import experiment

log = logging.getLogger(__name__)

REPORT_FILE = "init_from.json"
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
ACTIONS = ("loaded", "reinitialized", "kept_initial", "ignored")


def _escape(name: str) -> str:
    # How TensorFlow's object-based checkpoints escape an attribute name inside a key.
    return name.replace(".", "..").replace("/", ".S")


def _readable(key: str) -> str:
    name = key[: -len(_SUFFIX)] if key.endswith(_SUFFIX) else key
    name = name[len("model/"):] if name.startswith("model/") else name
    return name.replace(".S", "/").replace("..", ".")


def checkpoint_keys(model) -> Dict[str, tf.Variable]:
    """Checkpoint key -> variable for every variable of `model`, as tf.train.Checkpoint(model=model) saves it."""
    found: Dict[str, tf.Variable] = {}
    seen = set()

    def walk(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, tf.Variable):
            found["/".join(path) + _SUFFIX] = obj
            return
        for name, child in obj._trackable_children(save_type="checkpoint").items():
            walk(child, path + [_escape(name)])

    walk(model, ["model"])
    return found


def _classifier_ids(model) -> set:
    return {id(variable) for variable in model.classifier_variables}


def resolve_source(source: str, workdir: str) -> Tuple[str, str]:
    """("ours" | "original", checkpoint prefix or original path) for an --init-from SOURCE."""
    exp_dir = experiment.experiment_dir(workdir, source)
    if os.path.sep not in source and os.path.exists(os.path.join(exp_dir, experiment.CONFIG_FILE)):
        return "ours", experiment.resolve_checkpoint(exp_dir, "latest")
    if _is_experiment_folder(source):
        return "ours", experiment.resolve_checkpoint(source, "latest")
    if os.path.isdir(source) and tf.train.latest_checkpoint(source):
        prefix = tf.train.latest_checkpoint(source)
        return ("ours" if _is_object_based(prefix) else "original"), prefix
    if os.path.exists(source + ".index"):
        return ("ours" if _is_object_based(source) else "original"), source
    if os.path.exists(source):  # a release archive, or a folder of the original code without a state file
        return "original", source
    raise UserError(f"--init-from {source!r} is neither an experiment under {workdir!r} nor a checkpoint (a prefix "
                    f"with PREFIX.index, a folder holding one, or an original-code .tar.gz)")


def _is_experiment_folder(path: str) -> bool:
    """An experiment of ours: config.json beside checkpoints/ (the original code's output folders hold a
    config.json of their own, next to their checkpoint files)."""
    return os.path.isdir(experiment.checkpoints_dir(path)) and os.path.exists(os.path.join(path,
                                                                                         experiment.CONFIG_FILE))


def _is_object_based(prefix: str) -> bool:
    return OBJECT_GRAPH_KEY in dict(tf.train.list_variables(prefix))


def _our_tensors(prefix: str) -> Tuple[Dict[str, Tuple[int, ...]], "tf.train.CheckpointReader"]:
    reader = tf.train.load_checkpoint(prefix)
    shapes = {key: tuple(shape) for key, shape in reader.get_variable_to_shape_map().items()
              if key.startswith("model/") and key.endswith(_SUFFIX)}
    return shapes, reader


def init_from(model, source: str, workdir: str, skip_mismatched: bool = False) -> Dict:
    """Load what fits of SOURCE into `model` (a built, possibly distributed, network); returns the report."""
    kind, where = resolve_source(source, workdir)
    if kind == "original":
        return _init_from_original(model, where, skip_mismatched)
    shapes, reader = _our_tensors(where)
    targets = checkpoint_keys(model)
    classifier = _classifier_ids(model)
    rows, mismatched = [], []
    for key, variable in sorted(targets.items()):
        shape = tuple(variable.shape)
        if key not in shapes:
            rows.append(_row(key, shape, None, "kept_initial"))
        elif shapes[key] == shape:
            variable.assign(reader.get_tensor(key).astype(variable.dtype.as_numpy_dtype))
            rows.append(_row(key, shape, shapes[key], "loaded"))
        elif id(variable) in classifier:
            rows.append(_row(key, shape, shapes[key], "reinitialized"))
        else:
            mismatched.append(_row(key, shape, shapes[key], "reinitialized"))
    rows += [_row(key, None, shapes[key], "ignored") for key in sorted(set(shapes) - set(targets))]
    return _finish(rows, mismatched, skip_mismatched, {"kind": "ours", "checkpoint": where, "source": source})


def _init_from_original(model, path: str, skip_mismatched: bool) -> Dict:
    """The original code's names (models/original_names.py), fitted per tensor instead of all-or-nothing."""
    from revnet.models.original_names import ignored_kind, original_variable_map
    from revnet.train.original_checkpoint import located_checkpoint, read_structure, read_tensors

    targets = original_variable_map(model)
    classifier = _classifier_ids(model)
    rows, mismatched, values = [], [], {}
    with located_checkpoint(path) as prefix:
        reader, shapes, _ = read_structure(prefix)
        if OBJECT_GRAPH_KEY in shapes:
            raise UserError(f"{prefix!r} is a checkpoint of this project; pass its experiment id or folder")
        fitting = [name for name, target in targets.items() if name in shapes and tuple(shapes[name]) == target.shape]
        values = read_tensors(reader, prefix, fitting)
    stacked: Dict[int, Tuple[tf.Variable, np.ndarray]] = {}  # assembled slice by slice, assigned once
    for name, target in sorted(targets.items()):
        variable = target.params[target.key]
        if name not in shapes:
            rows.append(_row(name, target.shape, None, "kept_initial"))
        elif name in values:
            value = np.asarray(values[name], variable.dtype.as_numpy_dtype)
            if target.index is None:
                variable.assign(value)
            else:
                stacked.setdefault(id(variable), (variable, np.array(variable.numpy())))[1][target.index] = value
            rows.append(_row(name, target.shape, tuple(shapes[name]), "loaded"))
        elif id(variable) in classifier:
            rows.append(_row(name, target.shape, tuple(shapes[name]), "reinitialized"))
        else:
            mismatched.append(_row(name, target.shape, tuple(shapes[name]), "reinitialized"))
    for variable, value in stacked.values():
        variable.assign(value)
    rows += [_row(name, None, tuple(shapes[name]), "ignored") for name in sorted(set(shapes) - set(targets))
             if not ignored_kind(name)]
    ignored_other = sum(1 for name in shapes if name not in targets and ignored_kind(name))
    report = _finish(rows, mismatched, skip_mismatched, {"kind": "original", "checkpoint": path, "source": path})
    report["counts"]["ignored"] += ignored_other  # optimizer slots, counters, the learning rate
    return report


def _row(name: str, shape, source_shape, action: str) -> Dict:
    return {"name": _readable(name), "shape": list(shape) if shape is not None else None,
            "source_shape": list(source_shape) if source_shape is not None else None, "action": action}


def _finish(rows: List[Dict], mismatched: List[Dict], skip_mismatched: bool, source: Dict) -> Dict:
    if mismatched and not skip_mismatched:
        first = mismatched[0]
        raise UserError(f"--init-from: {len(mismatched)} weight(s) outside the classifier have other shapes in the "
                        f"source, e.g. {first['name']} {first['source_shape']} -> {first['shape']}; use a source of "
                        f"the same architecture, or --init-skip-mismatched to keep their initial values")
    rows = rows + mismatched
    if not any(row["action"] == "loaded" for row in rows):
        raise UserError(f"--init-from {source['source']!r}: no weight of the model was found in the source "
                        f"(different architecture, or a checkpoint of an older layout)")
    counts = {action: sum(1 for row in rows if row["action"] == action) for action in ACTIONS}
    return dict(source, counts=counts, rows=rows)


def format_report(report: Dict, limit: int = 12) -> str:
    """A table for the log: counts per action, then every weight that was not loaded (first `limit`)."""
    counts = report["counts"]
    lines = [f"init-from {report['source']} ({report['kind']} checkpoint {report['checkpoint']}): "
             f"{counts['loaded']} loaded, {counts['reinitialized']} re-initialised, {counts['kept_initial']} kept "
             f"their initial values, {counts['ignored']} source tensors ignored"]
    others = [row for row in report["rows"] if row["action"] != "loaded"]
    if others:
        lines.append(f"  {'action':<15}{'weight':<60}{'model shape':<20}source shape")
    for row in others[:limit]:
        lines.append(f"  {row['action']:<15}{row['name'][:59]:<60}{str(row['shape'] or '-'):<20}"
                     f"{row['source_shape'] or '-'}")
    if len(others) > limit:
        lines.append(f"  ... {len(others) - limit} more in {REPORT_FILE}")
    return "\n".join(lines)

