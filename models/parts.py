"""The named parts of a network, for freezing in fine-tuning: `stem`, `stage1`..`stageN` and `head`.

TensorFlow-free, so a bad `--freeze` is reported before TensorFlow loads. A frozen part keeps its weights
and its batch-norm statistics: it runs in inference mode (moving statistics, no update) and gets no
gradient, weight decay or momentum.
"""
from __future__ import annotations

from typing import FrozenSet, Tuple

from revnet.common.errors import UserError

ALL_BUT_HEAD = "all-but-head"


def part_names(config) -> Tuple[str, ...]:
    """stem, stage1..stageN, head for a model config."""
    return ("stem",) + tuple(f"stage{index + 1}" for index in range(len(config.units_per_stage))) + ("head",)


def parse_freeze(spec, config) -> Tuple[str, ...]:
    """`--freeze` text (`stem,stage1`, `all-but-head`, or empty) -> the frozen part names, in network order."""
    if not spec:
        return ()
    names = part_names(config)
    asked = [part.strip() for part in str(spec).split(",") if part.strip()]
    if ALL_BUT_HEAD in asked:
        asked = [part for part in asked if part != ALL_BUT_HEAD] + list(names[:-1])
    unknown = [part for part in asked if part not in names]
    if unknown:
        raise UserError(f"--freeze: no part {', '.join(map(repr, unknown))} in {config.name}; its parts are "
                        f"{', '.join(names)} (or {ALL_BUT_HEAD})")
    frozen = tuple(part for part in names if part in asked)
    if frozen == names:
        raise UserError(f"--freeze {spec!r} freezes every part of {config.name}: nothing would be trained "
                        f"(use {ALL_BUT_HEAD} to train only the classifier)")
    return frozen


def frozen_sets(config, parts) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """(the frozen parts, the frozen prefix: those before the first trained part) for Network.freeze;
    ValueError naming an unknown part."""
    names = part_names(config)
    unknown = sorted(set(parts) - set(names))
    if unknown:
        raise ValueError(f"no part(s) {unknown} in {config.name}; its parts are {list(names)}")
    frozen, prefix = frozenset(parts), []
    for name in names:
        if name not in frozen:
            break
        prefix.append(name)
    return frozen, frozenset(prefix)
