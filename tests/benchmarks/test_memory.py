"""The memory saving is real: measured in fresh processes, under tf.function, on TF's allocator."""
import json

import pytest

from benchmarks.memory import format_rows, run_worker


@pytest.fixture(scope="module")
def rows():
    results = {}
    for blocks in (1, 17):
        for mode in ("reversible", "autodiff"):
            spec = {"model": "revnet-38", "mode": mode, "batch_size": 16, "steps": 1, "input_size": 32,
                    "check_gradients": False, "overrides": {"units_per_stage": [blocks, 1, 1], "num_classes": 4}}
            results[(blocks, mode)] = run_worker(spec, timeout_seconds=300)
    return results


def test_reversible_peak_is_flat_in_depth_while_autodiff_grows(rows):
    reversible_growth = rows[(17, "reversible")]["peak_bytes"] / rows[(1, "reversible")]["peak_bytes"]
    autodiff_growth = rows[(17, "autodiff")]["peak_bytes"] / rows[(1, "autodiff")]["peak_bytes"]
    assert reversible_growth <= 1.3, rows
    assert autodiff_growth >= 2.0, rows
    assert rows[(17, "reversible")]["peak_bytes"] <= 0.5 * rows[(17, "autodiff")]["peak_bytes"]


def test_rows_have_the_documented_fields_and_format(rows):
    row = rows[(17, "reversible")]
    for key in ("model", "mode", "batch_size", "peak_bytes", "activation_bytes", "peak_rss_bytes", "step_seconds",
                "grad_rel_err"):
        assert key in row
    assert row["peak_rss_bytes"] > row["peak_bytes"] > 0 and row["step_seconds"] > 0
    json.dumps(row)
    table = format_rows(list(rows.values()))
    assert "reversible" in table and "peak/autodiff" in table
