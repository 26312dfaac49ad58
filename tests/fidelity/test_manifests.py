"""The full-size original revnet-104 and resnet-101 map completely onto ours: every model weight and moving
statistic of their manifests is used exactly once with an equal shape, every variable of ours receives one,
and nothing else in the checkpoints is mistaken for a weight. Built with shapes only: no 45M-parameter
checkpoint is written or allocated."""
import json

import numpy as np
import pytest

from revnet.models.layers import shapes_only
from revnet.models.original_names import check_fit, ignored_kind, infer_config, original_variable_map
from revnet.models.registry import build_model, get_config

from testkit.fidelity_helpers import fixture_path

MANIFESTS = {"revnet-104-full": "revnet-104", "resnet-101-full": "resnet-101", "resnet-32": "resnet-32",
             "revnet-38": "revnet-38", "revnet-104-narrow": "revnet-104"}
IGNORED = {"optimizer_slot": "optimizer_slot", "counter": "counter", "optimizer_scalar_lr": "learning_rate"}


def manifest(name):
    with open(fixture_path(name, "manifest.json")) as handle:
        return json.load(handle)


def planned(name):
    entries = manifest(name)["variables"]
    shapes = {entry["name"]: tuple(entry["shape"]) for entry in entries}
    config = infer_config(get_config(MANIFESTS[name]), shapes)
    with shapes_only():
        model = build_model(config)
    return entries, shapes, config, model, original_variable_map(model)


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_every_weight_and_moving_statistic_is_used_exactly_once(name):
    entries, shapes, config, model, targets = planned(name)
    weights = {e["name"]: tuple(e["shape"]) for e in entries if e["kind"] in ("model_weight", "bn_moving_stat")}
    assert set(targets) == set(weights)
    assert check_fit(targets, shapes) == []
    for original, target in targets.items():
        assert target.shape == weights[original], original
    # Used once: no two original names land on the same variable slice, and every variable slice is covered.
    slices = [(id(t.params), t.key, t.index) for t in targets.values()]
    assert len(set(slices)) == len(slices)
    expected_slices = set()
    for module in model._flatten_modules():
        for spec in module.param_specs:
            stacked = getattr(module, "num_blocks", None)
            indices = range(stacked) if stacked is not None else [None]
            expected_slices |= {(id(module.params), spec.name, index) for index in indices}
    assert set(slices) == expected_slices


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_non_weights_are_ignored_by_kind_and_parameter_counts_agree(name):
    entries, _, _, model, _ = planned(name)
    for entry in entries:
        assert ignored_kind(entry["name"]) == IGNORED.get(entry["kind"]), entry["name"]
    trainable = sum(int(np.prod(e["shape"])) for e in entries if e["kind"] == "model_weight")
    assert model.count_params() == trainable == manifest(name)["summary"]["model_weight"]["numel"]


def test_full_size_widths_are_the_registry_models():
    for name in ("revnet-104-full", "resnet-101-full"):
        _, _, config, _, _ = planned(name)
        assert config == get_config(MANIFESTS[name])
    assert planned("revnet-104-full")[3].count_params() == 45_428_072


def test_legacy_learning_rate_name_is_ignored():
    assert ignored_kind("Train/Model/learn_rate") == "learning_rate"
    assert ignored_kind("Model/Model/unit_1_0/f/sub2/conv2/w/Momentum") == "optimizer_slot"
    assert ignored_kind("Model/unit_1_0/f/sub2/conv2/w") is None
