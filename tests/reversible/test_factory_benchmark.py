"""The memory benchmark's rows for the public layer (`--models seq-list,seq-factory`): planned like registry models,
and the two forms are the same network."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.benchmarks.memory import _SequenceNet, plan
from revnet.common.errors import UserError


def test_plan_has_one_row_per_blocks_and_mode():
    specs = plan(["seq-factory"], ["reversible", "autodiff"], units=[(None, (4,)), ("seq-factory", (16,))])
    assert [(s["model"], s["mode"], s["overrides"]["units_per_stage"]) for s in specs] == [
        ("seq-factory", "reversible", [4]), ("seq-factory", "autodiff", [4]),
        ("seq-factory", "reversible", [16]), ("seq-factory", "autodiff", [16])]
    with pytest.raises(UserError, match="float32 only"):
        plan(["seq-list"], ["reversible"], precisions=["bf16"])
    with pytest.raises(UserError, match="one number of blocks"):
        plan(["seq-list"], ["reversible"], units=[(None, (2, 2))])


def test_list_and_factory_rows_measure_the_same_network():
    images = tf.random.stateless_uniform([2, 32, 32, 3], [1, 2], 0, 255)
    nets = {name: _SequenceNet(name, "reversible", num_blocks=2) for name in ("seq-list", "seq-factory")}
    assert nets["seq-factory"].config.block == "factory" and nets["seq-factory"].config.depth == 4
    assert len(nets["seq-list"].trainable_variables) == 2 + 2 * 2 * 6 + 2
    assert len(nets["seq-factory"].trainable_variables) == 2 + 2 * 6 + 2   # stacked over the blocks
    np.testing.assert_allclose(nets["seq-factory"](images, training=True).numpy(),
                               nets["seq-list"](images, training=True).numpy(), rtol=1e-5, atol=1e-5)
