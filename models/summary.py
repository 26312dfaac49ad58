"""The model-zoo table printed by `cli.py models`."""
from __future__ import annotations

from typing import Dict, List

from revnet.models.layers import shapes_only
from revnet.models.registry import PAPER_PARAMS_MILLIONS, build_model, get_config, list_models


def model_row(name: str) -> Dict:
    config = get_config(name)
    with shapes_only():
        params = build_model(config).count_params()
    return {"name": name, "family": config.family, "architecture": config.architecture, "block": config.block,
            "units_per_stage": list(config.units_per_stage), "channels_per_stage": list(config.channels_per_stage),
            "params": params, "paper_params": (int(PAPER_PARAMS_MILLIONS[name] * 1e6)
                                               if name in PAPER_PARAMS_MILLIONS else None),
            "input_size": config.input_size, "num_classes": config.num_classes}


def model_table() -> List[Dict]:
    return [model_row(name) for name in list_models()]


def format_model_table(rows: List[Dict]) -> str:
    header = (f"{'name':<12}{'family':<10}{'block':<12}{'units':<12}{'channels':<18}"
              f"{'params':>12}{'paper':>9}{'input':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        paper = f"{row['paper_params'] / 1e6:.2f}M" if row["paper_params"] else "-"
        lines.append(f"{row['name']:<12}{row['family']:<10}{row['block']:<12}"
                     f"{'-'.join(map(str, row['units_per_stage'])):<12}"
                     f"{'-'.join(map(str, row['channels_per_stage'])):<18}"
                     f"{row['params'] / 1e6:>11.2f}M{paper:>9}{row['input_size']:>5}x{row['input_size']}")
    return "\n".join(lines)
