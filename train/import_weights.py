"""`import_weights`: an original-code checkpoint (renmengye/revnet-public, e.g. the released RevNet-104)
into an ordinary experiment folder that `eval --id`, `export --id` and `train --id` use unchanged.

The model's structure comes from `--model` (architecture, block, units per stage); its stem and stage
widths and class count from the checkpoint's shapes. Every model weight and moving statistic must map
onto exactly one of our variables with the same shape; optimizer slots, counters and the learning rate
are ignored and counted. The model takes the original's input convention (models/normalization.py) and,
for ImageNet, its evaluation crop ("inception"). Everything is checked and read before anything is
written; the experiment folder is built under a temporary name and renamed into place.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import secrets
import shutil
from typing import Dict, List, Optional, Tuple

from revnet.common.errors import UserError, choose
from revnet.common.fileio import atomic_write_json
from revnet.models.layers import MOVING_KINDS, shapes_only
from revnet.models.original_names import (OBJECT_GRAPH_KEY, check_fit, fit_error, ignored_kind, infer_config,
                                          original_variable_map, assign_weights)
from revnet.models.registry import PREPROCESSING, build_model, get_config
from revnet.train import experiment
from revnet.train.train_config import DEFAULT_WORKDIR, DataConfig, recipe_for
from revnet.train.input_normalization import dataset_pixel_mean, original_normalization, parse_pixel_mean
from revnet.train.original_checkpoint import located_checkpoint, read_structure, read_tensors, scalar_value

log = logging.getLogger(__name__)

IMPORT_FILE = "import.json"
# The original code's evaluation preprocessing per family (ImageNet: resnet/data_tfrecord/image_processing.py).
ORIGINAL_PREPROCESSING = {"cifar": "cifar", "imagenet": "inception"}


def import_weights(checkpoint: str, model: str, id: str, workdir: Optional[str] = None, data: Optional[str] = None,
                   pixel_mean: Optional[str] = None, labels: Optional[str] = None,
                   preprocessing: Optional[str] = None, units: Optional[str] = None) -> Dict:
    """Import checkpoint CHECKPOINT as experiment WORKDIR/ID of architecture MODEL (with `units` per stage,
    e.g. "9-9-9", instead of the registry's when given); returns the report."""
    workdir = workdir or DEFAULT_WORKDIR
    base = get_config(model)
    if units is not None:
        base = get_config(model, units_per_stage=parse_units(units, len(base.units_per_stage)))
    if not id or id != os.path.basename(id) or id.startswith(".") or id in ("..",):
        raise UserError(f"--id {id!r} must be a plain folder name (no path separators, not starting with '.')")
    if preprocessing is not None:
        choose("preprocessing", preprocessing, PREPROCESSING)
    final_dir = experiment.experiment_dir(workdir, id)
    if os.path.lexists(final_dir):
        raise UserError(f"{final_dir!r} already exists; choose another --id (nothing is imported over a folder)")
    metadata = _dataset_metadata(data, base.family)
    mean = _pixel_mean(pixel_mean, metadata, data, base)

    config, values, source, ignored = _read_original(checkpoint, base, mean, preprocessing)
    if metadata is not None and int(metadata["num_classes"]) != config.num_classes:
        # Other classes than the dataset's: the weights become an experiment to fine-tune from.
        log.warning("the checkpoint has %d classes and dataset %s has %d: imported as a %d-class experiment that "
                    "does not record the dataset; fine-tune it onto the dataset with `cli.py train --init-from %s "
                    "--data %s --id NEW`", config.num_classes, data, metadata["num_classes"], config.num_classes,
                    id, data)
        data_for_experiment, metadata_for_experiment = None, None
    else:
        data_for_experiment, metadata_for_experiment = data, metadata
    label_names = _label_names(labels, metadata_for_experiment, config.num_classes)
    network = build_model(config)
    targets = original_variable_map(network)
    assign_weights(targets, values)
    counts = _mapped_counts(network, targets)
    report = {"id": id, "model": config.name, "architecture": config.architecture, "block": config.block,
              "units_per_stage": list(config.units_per_stage), "stem_channels": config.stem_channels,
              "channels_per_stage": list(config.channels_per_stage), "num_classes": config.num_classes,
              "input_normalization": config.input_normalization, "preprocessing": config.preprocessing,
              "checkpoint": source, "mapped": counts,
              "ignored": {kind: ignored.get(kind, 0) for kind in ("optimizer_slot", "counter", "learning_rate")}}
    exp_dir = _write_experiment(workdir, id, network,
                                _data_part(data_for_experiment, metadata_for_experiment, label_names),
                                report)
    report["experiment_dir"] = os.path.abspath(exp_dir)
    if data_for_experiment is None and data is None:
        log.warning("imported without --data: `eval --id` and `train --id` need a dataset; export works as is")
    log.info("imported %s (%d tensors, %d parameters) as %s", checkpoint, counts["tensors"], counts["parameters"],
             exp_dir)
    return report


def _read_original(checkpoint: str, base, pixel_mean, preprocessing: Optional[str]):
    """(config, {original name: numpy}, source record, ignored counts): the checkpoint checked against the
    architecture and read completely, or a UserError naming the first variable that does not fit."""
    with located_checkpoint(checkpoint) as prefix:
        reader, shapes, dtypes = read_structure(prefix)
        if OBJECT_GRAPH_KEY in shapes:
            raise UserError(f"{prefix!r} is an object-based TF2 checkpoint (such as this project's own), not the "
                            f"original code's name-based one; use it through its experiment folder instead")
        config = _imported_config(base, shapes, pixel_mean, preprocessing)
        with shapes_only():
            expected = original_variable_map(build_model(config))
        problems = check_fit(expected, shapes)
        problems += [(name, f"has dtype {dtypes[name].name}; expected a floating-point tensor")
                     for name in expected if name in dtypes and not dtypes[name].is_floating]
        if problems:
            raise fit_error(config, shapes, problems)
        log.info("reading %d tensors from %s", len(expected), prefix)
        values = read_tensors(reader, prefix, list(expected))
        ignored = collections.Counter(ignored_kind(name) for name in shapes if ignored_kind(name))
        global_step = next((scalar_value(reader, n, shapes) for n in shapes if ignored_kind(n) == "counter"), None)
    source = {"path": os.path.abspath(checkpoint), "prefix": os.path.basename(prefix), "global_step": global_step,
              "variables": len(shapes)}
    return config, values, source, ignored


def parse_units(text: str, num_stages: int) -> Tuple[int, ...]:
    """`--units 9-9-9` as a tuple with one positive count per stage of the architecture."""
    try:
        counts = tuple(int(part) for part in text.replace(",", "-").split("-"))
    except ValueError:
        counts = ()
    if len(counts) != num_stages or min(counts) < 1:
        raise UserError(f"--units must be {num_stages} positive unit counts joined by '-' (one per stage), "
                        f"got {text!r}")
    return counts


def _dataset_metadata(data: Optional[str], family: str) -> Optional[Dict]:
    if data is None:
        return None
    from revnet.preprocess import schema

    metadata = schema.load_metadata(data)
    synsets = metadata.get("synsets")
    if family == "imagenet" and synsets and list(synsets) != sorted(synsets):
        # The original's logit k is the k-th synset in sorted order (imagenet_lsvrc_2015_synsets.txt).
        raise UserError(f"dataset {data!r} does not number its classes in sorted synset order, so its labels would "
                        f"not match the original model's logits")
    return metadata


def _pixel_mean(pixel_mean: Optional[str], metadata: Optional[Dict], data: Optional[str], base):
    """--pixel-mean if given (it wins over a dataset's), else the CIFAR dataset's recorded per-pixel mean."""
    if pixel_mean is not None:
        return parse_pixel_mean(pixel_mean)
    if metadata is None or base.family != "cifar":
        return None
    recorded = dataset_pixel_mean(metadata, data, base.input_size)
    if recorded is None:
        raise UserError(f"dataset {data!r} records no pixel_mean (it was written before `preprocess` recorded the "
                        f"training images' mean): re-run `cli.py preprocess`, or add --pixel-mean R,G,B")
    return recorded


def _imported_config(base, shapes, pixel_mean, preprocessing: Optional[str]):
    """The registry config with the checkpoint's widths, the original's normalisation and preprocessing."""
    inferred = infer_config(base, shapes)
    normalization = original_normalization(base.family, base.input_size, pixel_mean)
    return get_config(base.name, units_per_stage=base.units_per_stage, stem_channels=inferred.stem_channels,
                      channels_per_stage=inferred.channels_per_stage,
                      num_classes=inferred.num_classes,
                      preprocessing=preprocessing or ORIGINAL_PREPROCESSING[base.family],
                      **normalization)


def _label_names(labels: Optional[str], metadata: Optional[Dict], num_classes: int) -> List[str]:
    if labels is None:
        return list((metadata or {}).get("label_names") or [])
    try:
        with open(labels, "r", encoding="utf-8") as handle:
            names = [line.rstrip("\r\n") for line in handle]
    except OSError as error:
        raise UserError(f"cannot read --labels {labels!r}: {error.strerror}") from None
    while names and not names[-1].strip():
        names.pop()
    if len(names) != num_classes or not all(name.strip() for name in names):
        raise UserError(f"--labels {labels!r} has {len(names)} lines; expected one non-empty class name per line "
                        f"for each of the checkpoint's {num_classes} classes (line k names logit k)")
    return names


def _data_part(data: Optional[str], metadata: Optional[Dict], label_names: List[str]) -> DataConfig:
    if metadata is None:
        return DataConfig(dir=None, label_names=tuple(label_names) or None)
    return dataclasses.replace(experiment.dataset_config(data, metadata), label_names=tuple(label_names) or None)


def _mapped_counts(network, targets) -> Dict[str, int]:
    """How much was mapped; every variable of the network must have been a target (checked here)."""
    variables = {(id(module.params), spec.name): spec for module in network._flatten_modules()
                 for spec in module.param_specs}
    covered = {(id(target.params), target.key) for target in targets.values()}
    if covered != set(variables):
        raise RuntimeError(f"internal error: {len(set(variables) - covered)} variables of {network.config.name} have "
                           f"no original name")
    moving = sum(1 for target in targets.values() if variables[(id(target.params), target.key)].kind in MOVING_KINDS)
    return {"tensors": len(targets), "weights": len(targets) - moving, "moving_statistics": moving,
            "variables": len(variables), "parameters": network.count_params()}


def _write_experiment(workdir: str, exp_id: str, network, data: DataConfig, report: Dict) -> str:
    """create_experiment under a temporary id, then rename into place, so a failure leaves nothing behind."""
    final_dir = experiment.experiment_dir(workdir, exp_id)
    staging_id = f".import-{exp_id}-{secrets.token_hex(4)}"
    staging_dir = experiment.experiment_dir(workdir, staging_id)
    train = recipe_for(network.config.family).with_seed()  # the recipe fine-tuning starts from
    made_workdir = not os.path.isdir(workdir)
    try:
        experiment.create_experiment(workdir, staging_id, network, data, train)
        atomic_write_json(os.path.join(staging_dir, IMPORT_FILE), report)
        if os.path.lexists(final_dir):
            raise UserError(f"{final_dir!r} appeared while importing; choose another --id")
        os.rename(staging_dir, final_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if made_workdir and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)
        raise
    return final_dir


def format_report(report: Dict) -> str:
    mapped, ignored, source = report["mapped"], report["ignored"], report["checkpoint"]
    widths = "-".join(map(str, report["channels_per_stage"]))
    return "\n".join([
        f"imported {source['prefix']} (original global step {source['global_step']}) as {report['id']}",
        f"  model       {report['model']}: {report['architecture']}, {report['block']} units "
        f"{'-'.join(map(str, report['units_per_stage']))}, stem {report['stem_channels']}, widths {widths}, "
        f"{report['num_classes']} classes",
        f"  mapped      {mapped['tensors']} tensors ({mapped['weights']} weights, {mapped['moving_statistics']} moving "
        f"statistics) onto {mapped['variables']} variables, {mapped['parameters']:,} parameters",
        f"  ignored     {ignored['optimizer_slot']} optimizer slots, {ignored['counter']} counters, "
        f"{ignored['learning_rate']} learning-rate scalars",
        f"  inputs      raw 0..255 RGB, normalised inside the model: {report['input_normalization']}; "
        f"preprocessing {report['preprocessing']}",
        f"  experiment  {report['experiment_dir']}"])
