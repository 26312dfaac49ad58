"""The memory saving is real: measured in fresh processes, under tf.function, on TF's allocator.

Both depths have a reversible stack in stage 1 (3 units = opener + 2 stacked blocks, 19 units = opener +
18), so the comparison is growth per added block, not the fixed cost of having a stack at all. Measured
on this machine kind (batch 16): autodiff grows about 8.8 MB per block, the reversible stack about
0.07 MB. Two guards keep reconstructions from running ahead of the gradients (and keeping their tapes):
the backward loop's parallel_iterations=1 and the control dependency in `_block_backward`; with both
removed the reversible stack grows about 4.5 MB per block, which this test must catch.
"""
import json

import pytest

from revnet.benchmarks.memory import run_worker
from revnet.benchmarks.memory_report import format_rows

pytestmark = pytest.mark.slow  # real subprocesses; `-m "not slow"` skips them

BATCH = 16
SHALLOW_UNITS, DEEP_UNITS = 3, 19
STAGE1_CHANNELS = 32  # revnet-38's first stage; each block outputs the pair (y1, y2) of 16 channels each


@pytest.fixture(scope="module")
def rows():
    results = {}
    for units in (SHALLOW_UNITS, DEEP_UNITS):
        for mode in ("reversible", "autodiff"):
            spec = {"model": "revnet-38", "mode": mode, "batch_size": BATCH, "steps": 1, "input_size": 32,
                    "check_gradients": False, "overrides": {"units_per_stage": [units, 1, 1], "num_classes": 4}}
            results[(units, mode)] = run_worker(spec, timeout_seconds=300)
    return results


def _bytes_per_added_block(rows, mode):
    grown = rows[(DEEP_UNITS, mode)]["peak_bytes"] - rows[(SHALLOW_UNITS, mode)]["peak_bytes"]
    return grown / (DEEP_UNITS - SHALLOW_UNITS)


def test_reversible_peak_is_flat_in_depth_while_autodiff_grows(rows):
    block_output_bytes = BATCH * 32 * 32 * STAGE1_CHANNELS * 4
    autodiff_slope = _bytes_per_added_block(rows, "autodiff")
    reversible_slope = _bytes_per_added_block(rows, "reversible")
    # Autodiff stores every block's intermediate activations: several block outputs' worth per block.
    assert autodiff_slope >= 2 * block_output_bytes, rows
    # The reversible stack stores nothing per block: its growth is a small fraction of autodiff's.
    assert reversible_slope <= 0.1 * autodiff_slope, rows
    assert rows[(DEEP_UNITS, "reversible")]["peak_bytes"] <= 0.5 * rows[(DEEP_UNITS, "autodiff")]["peak_bytes"]


def test_rows_have_the_documented_fields_and_format(rows):
    row = rows[(DEEP_UNITS, "reversible")]
    for key in ("model", "units_per_stage", "depth", "mode", "precision", "batch_size", "peak_bytes",
                "activation_bytes", "activation_bytes_per_image", "peak_rss_bytes", "step_seconds", "grad_rel_err",
                "recon_rel_err"):
        assert key in row
    assert row["units_per_stage"] == [DEEP_UNITS, 1, 1] and row["depth"] == 4 * (DEEP_UNITS + 2) + 2
    assert row["peak_rss_bytes"] > row["peak_bytes"] > 0 and row["step_seconds"] > 0
    json.dumps(row)
    table = format_rows(list(rows.values()))
    assert "reversible/autodiff peak" in table and "Growth with depth" in table
