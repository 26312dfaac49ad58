"""Checks of the train, eval and import-weights arguments that need no TensorFlow, so the CLI reports a
wrong model name, a missing folder or a bad id at once, before the seconds TensorFlow takes to import.
The commands check everything again where the work happens; these only answer early."""
from __future__ import annotations

import os
from typing import Optional

from revnet.common.errors import UserError
from revnet.models.parts import parse_freeze
from revnet.models.registry import get_config
from revnet.train.train_config import DEFAULT_WORKDIR

CONFIG_FILE = "config.json"   # train/experiment.py's, without importing it (it imports TensorFlow)
METADATA_FILE = "metadata.json"


def check_plain_id(exp_id: Optional[str], flag: str = "--id") -> None:
    if exp_id is not None and (not exp_id or exp_id != os.path.basename(exp_id) or exp_id.startswith(".")):
        raise UserError(f"{flag} {exp_id!r} must be a plain folder name (no path separators, not starting with '.')")


def check_dataset_folder(data: Optional[str]) -> None:
    if data is None or "://" in data:
        return
    if not os.path.isdir(data):
        raise UserError(f"data folder {data!r} does not exist; run `python cli.py preprocess` first")
    if not os.path.exists(os.path.join(data, METADATA_FILE)):
        raise UserError(f"{data!r} has no {METADATA_FILE}; it is not a finished dataset from `cli.py preprocess`")


def check_train_arguments(model: str, data: Optional[str] = None, exp_id: Optional[str] = None,
                          workdir: Optional[str] = None, freeze: Optional[str] = None, **_) -> None:
    parse_freeze(freeze, get_config(model))
    check_plain_id(exp_id)
    check_dataset_folder(data)
    exists = exp_id is not None and os.path.exists(os.path.join(workdir or DEFAULT_WORKDIR, exp_id, CONFIG_FILE))
    if data is None and not exists:
        raise UserError("--data is required for a new experiment (a folder written by `cli.py preprocess`)")


def check_experiment_arguments(exp_id: str, workdir: Optional[str] = None, **_) -> None:
    check_plain_id(exp_id)
    path = os.path.join(workdir or DEFAULT_WORKDIR, exp_id, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"no experiment {exp_id!r} under {workdir or DEFAULT_WORKDIR!r} (missing {path})")


def check_import_arguments(checkpoint: str, model: str, exp_id: str, workdir: Optional[str] = None,
                           data: Optional[str] = None, **_) -> None:
    get_config(model)
    check_plain_id(exp_id)
    check_dataset_folder(data)
    if not os.path.exists(checkpoint) and not os.path.exists(checkpoint + ".index"):
        raise UserError(f"no checkpoint at {checkpoint!r}; expected a checkpoint prefix (PREFIX.index must exist), "
                        f"a folder with a 'checkpoint' file, or a .tar.gz release archive")
    target = os.path.join(workdir or DEFAULT_WORKDIR, exp_id)
    if os.path.lexists(target):
        raise UserError(f"{target!r} already exists; choose another --id (nothing is imported over a folder)")
