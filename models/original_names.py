"""The original code's checkpoint names (renmengye/revnet-public, saved by its TF1 `tf.train.Saver`)
mapped onto our variables, the channel widths read from their shapes, and the check that a checkpoint
fits a model (every weight and moving statistic used exactly once, shapes equal).

Original names, all under the variable scope `Model/` (stage s counts from 1, unit i from 0):

    init/init_conv/w, init/init_bn/{gamma,beta,ema_mean,ema_var}    stem conv, stem BN
    unit_s_i/sub{k}/bn{k}/..., unit_s_i/sub{k}/conv{k}/w            ResNet unit: F (bn1 absent in unit_1_0)
    unit_s_i/project/w                                            ResNet bottleneck shortcut projection
    unit_s_i/{f,g}/sub{k}/...                                     RevNet unit: F and G
    unit_s_0/x{1,2}_bottleneck/project/w                          RevNet bottleneck projections of x1, x2
    unit_last/final_bn/..., logit/w, logit/b                      head BN and dense layer

A RevNet stage's unit 0 is our opening unit; units 1.. are the slices 0.. of the stage's stacked
`[num_blocks, ...]` variables. Our BN names moving_mean/moving_var are the original's ema_mean/ema_var.
Optimizer slots (`Model/Model/.../Momentum`), `global_step` and the learning-rate scalar (also the legacy
`Train/Model/learn_rate`) are not model weights: they are ignored and counted.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from revnet.common.errors import UserError
from revnet.models.registry import ModelConfig, get_config, list_models

_LEAF = {"gamma": "gamma", "beta": "beta", "moving_mean": "ema_mean", "moving_var": "ema_var", "kernel": "w"}
_SLOT_NAMES = ("Momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1", "Adagrad", "beta1_power", "beta2_power")
_UNIT = re.compile(r"Model/unit_(\d+)_(\d+)/")
# TF2 object-based checkpoints (ours included) carry this key; their names are object paths, not Model/...
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one original tensor goes: `params[key]` (or its slice `index` of a stacked variable)."""

    module: str
    params: Mapping
    key: str
    index: Optional[int]
    shape: Tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.module}/{self.key}" + (f"[{self.index}]" if self.index is not None else "")


def ignored_kind(name: str) -> Optional[str]:
    """'optimizer_slot', 'counter' or 'learning_rate' for checkpoint entries that are not model weights."""
    base = name.rsplit("/", 1)[-1]
    if name.startswith("Model/Model/") or base in _SLOT_NAMES:
        return "optimizer_slot"
    if base == "global_step":
        return "counter"
    if base in ("learn_rate", "learning_rate"):
        return "learning_rate"
    return None


# --- names -----------------------------------------------------------------------------------------
def _inner(name: str) -> str:
    """Our residual-function parameter ("bn2/moving_var", "conv1/kernel") -> "sub2/bn2/ema_var", "sub1/conv1/w"."""
    layer, leaf = name.split("/")
    match = re.fullmatch(r"(?:bn|conv)(\d+)", layer)
    if match is None or leaf not in _LEAF:
        raise ValueError(f"no original name for parameter {name!r}")
    return f"sub{match.group(1)}/{layer}/{_LEAF[leaf]}"


def _unit(name: str, architecture: str) -> str:
    head, _, rest = name.partition("/")
    if head == "shortcut":
        return "project/w"
    if head in ("shortcut1", "shortcut2"):
        return f"x{head[-1]}_bottleneck/project/w"
    return _inner(rest) if architecture == "resnet" else f"{head}/{_inner(rest)}"


def _stem(name: str) -> str:
    layer, leaf = name.split("/")
    return f"init/init_{layer}/{_LEAF[leaf]}"


def _head(name: str) -> str:
    layer, leaf = name.split("/")
    return f"unit_last/final_bn/{_LEAF[leaf]}" if layer == "bn" else f"logit/{'w' if leaf == 'kernel' else 'b'}"


def _targets(module, label: str, translate, index: Optional[int] = None) -> Dict[str, Target]:
    targets = {}
    for spec in module.param_specs:
        shape = tuple(int(d) for d in module.params[spec.name].shape)
        targets["Model/" + translate(spec.name)] = Target(label, module.params, spec.name, index,
                                                          shape[1:] if index is not None else shape)
    return targets


def original_variable_map(model) -> Dict[str, Target]:
    """{original name: Target} for every variable of `model`, in network order. Works on a model built
    under `layers.shapes_only()` (targets then hold TensorSpecs), so a full-size map costs no memory."""
    config = model.config
    targets = _targets(model.stem, "stem", _stem)
    position = [(stage, unit) for stage, count in enumerate(config.units_per_stage, 1) for unit in range(count)]
    if config.architecture == "resnet":
        for (stage, unit), layer in zip(position, model.units, strict=True):
            targets.update(_targets(layer, f"stage{stage}/unit{unit + 1}",
                                    lambda n, s=stage, u=unit: f"unit_{s}_{u}/" + _unit(n, "resnet")))
    else:
        for stage, (opener, stack) in enumerate(zip(model.openers, model.stacks, strict=True), 1):
            targets.update(_targets(opener, f"stage{stage}/unit1",
                                    lambda n, s=stage: f"unit_{s}_0/" + _unit(n, "revnet")))
            for index in range(stack.num_blocks if stack is not None else 0):
                def translate(n, s=stage, u=index + 1):
                    return f"unit_{s}_{u}/" + _unit(n, "revnet")
                targets.update(_targets(stack, f"stage{stage}/reversible", index=index, translate=translate))
    targets.update(_targets(model.head, "head", _head))
    return targets


# --- reading a checkpoint's structure --------------------------------------------------------------
def _order(name: str) -> Tuple:
    """Network order of an original name: stem, units by (stage, index), head, anything else."""
    match = _UNIT.match(name)
    if name.startswith("Model/init/"):
        return (0,)
    if match:
        return (1, int(match.group(1)), int(match.group(2)))
    return (2,) if name.startswith("Model/unit_last/") else (3,) if name.startswith("Model/logit/") else (4,)


def describe(shapes: Mapping[str, Sequence[int]]) -> str:
    """What an original checkpoint holds, from its names: architecture, block, units per stage, stem,
    and the registry models with that structure."""
    names = [n for n in shapes if ignored_kind(n) is None]
    units: Dict[int, int] = {}
    for name in names:
        match = _UNIT.match(name)
        if match:
            units[int(match.group(1))] = max(units.get(int(match.group(1)), 0), int(match.group(2)) + 1)
    if not units:
        return "it has no Model/unit_* variables, so it is not a ResNet or RevNet checkpoint of the original code"
    architecture = "revnet" if any(re.match(r"Model/unit_\d+_\d+/[fg]/", n) for n in names) else "resnet"
    block = "bottleneck" if any(n.endswith("/conv3/w") for n in names) else "basic"
    kernel = list(shapes.get("Model/init/init_conv/w", [0]))[0]
    family = {3: "cifar", 7: "imagenet"}.get(kernel, f"{kernel}x{kernel}")
    per_stage = tuple(units.get(stage, 0) for stage in range(1, max(units) + 1))
    kinds = {name: get_config(name) for name in list_models()}
    kind = (architecture, block, family)
    same_kind = [name for name, c in kinds.items() if (c.architecture, c.block, c.family) == kind]
    matches = [name for name in same_kind if kinds[name].units_per_stage == per_stage]
    text = (f"it looks like a {'RevNet' if architecture == 'revnet' else 'ResNet'} with {block} units "
            f"{'-'.join(map(str, per_stage))} and a {family} stem")
    if matches:
        return text + f" (--model {' or '.join(matches)})"
    if same_kind and 0 not in per_stage and len(per_stage) == len(kinds[same_kind[0]].units_per_stage):
        return text + f" (--model {same_kind[0]} --units {'-'.join(map(str, per_stage))})"
    return text + " (no registered architecture has that structure)"


def fit_error(config: ModelConfig, shapes, problems: Sequence[Tuple[str, str]]) -> UserError:
    """One error naming the first variable that does not fit (network order) and what the checkpoint is."""
    name, problem = problems[0]
    more = f" (and {len(problems) - 1} more misfits)" if len(problems) > 1 else ""
    return UserError(f"the checkpoint does not fit --model {config.name}: {name} {problem}{more}; {describe(shapes)}")


def _width(shapes, name: str, axis: int) -> int:
    shape = shapes.get(name)
    if shape is None or len(shape) != 4:
        raise LookupError(name)
    return int(shape[axis])


def infer_config(config: ModelConfig, shapes: Mapping[str, Sequence[int]]) -> ModelConfig:
    """`config` with the stem width, stage widths and class count read from the checkpoint's shapes."""
    last = "sub3/conv3/w" if config.block == "bottleneck" else "sub2/conv2/w"
    try:
        stem_channels = _width(shapes, "Model/init/init_conv/w", 3)
        outputs = []
        for stage in range(1, len(config.units_per_stage) + 1):
            if config.architecture == "resnet":
                outputs.append(_width(shapes, f"Model/unit_{stage}_0/{last}", 3))
            else:
                outputs.append(2 * _width(shapes, f"Model/unit_{stage}_0/f/{last}", 3))
        logit = shapes.get("Model/logit/w")
        if logit is None or len(logit) != 2:
            raise LookupError("Model/logit/w")
    except LookupError as missing:
        raise structure_error(config, shapes, missing.args[0]) from None
    factor = 4 if config.block == "bottleneck" else 1
    for stage, width in enumerate(outputs, 1):
        if width % factor:
            raise fit_error(config, shapes, [(f"Model/unit_{stage}_0/{last}",
                                              f"gives stage {stage} {width} output channels, not a multiple of 4")])
    return dataclasses.replace(config, stem_channels=stem_channels,
                               channels_per_stage=tuple(width // factor for width in outputs),
                               num_classes=int(logit[1]))


def structure_error(config: ModelConfig, shapes, name: str) -> UserError:
    """The error for a checkpoint whose width-defining variable `name` is missing or malformed: the first
    misfit by name against the registry's structure, so the message names the earliest variable."""
    from revnet.models.layers import shapes_only
    from revnet.models.registry import build_model

    with shapes_only():
        expected = original_variable_map(build_model(config))
    problems = check_fit(expected, shapes, compare_shapes=False) or [(name, "is missing or has the wrong rank")]
    return fit_error(config, shapes, problems)


def check_fit(expected: Mapping[str, Target], shapes: Mapping[str, Sequence[int]],
              compare_shapes: bool = True) -> List[Tuple[str, str]]:
    """Every (name, problem) between the model's expected names/shapes and the checkpoint's, in network order."""
    present = {name: tuple(int(d) for d in shape) for name, shape in shapes.items() if ignored_kind(name) is None}
    rank = {name: position for position, name in enumerate(expected)}
    problems = []
    for name in sorted(set(expected) | set(present), key=lambda n: (_order(n), rank.get(n, len(rank)), n)):
        if name not in present:
            problems.append((name, "is missing from the checkpoint"))
        elif name not in expected:
            problems.append((name, "is in the checkpoint but not in the model"))
        elif compare_shapes and present[name] != expected[name].shape:
            problems.append((name, f"has shape {list(present[name])} but the model expects "
                                   f"{list(expected[name].shape)}"))
    return problems


def assign_weights(expected: Mapping[str, Target], values: Mapping[str, "object"]) -> None:
    """Write the original tensors (numpy, by original name) into the model's variables; stacked variables
    are assembled from their slices first, so each variable is assigned once."""
    import numpy as np

    grouped: Dict[Tuple[int, str], List[Tuple[Optional[int], str]]] = {}
    for name, target in expected.items():
        grouped.setdefault((id(target.params), target.key), []).append((target.index, name))
    for name, target in expected.items():
        slices = grouped.pop((id(target.params), target.key), None)
        if slices is None:
            continue
        variable = target.params[target.key]
        dtype = variable.dtype.as_numpy_dtype
        if target.index is None:
            value = np.asarray(values[name], dtype)
        else:
            value = np.stack([np.asarray(values[n], dtype) for _, n in sorted(slices)])
        variable.assign(value)
