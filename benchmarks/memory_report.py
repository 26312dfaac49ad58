"""The memory benchmark's table, its comparisons (the ratios the README quotes) and its plot.

Every ratio compares rows of one run: a RevNet's (or RevViT's) reversible row against its own autodiff row, against
the ResNet of the same family, block and nearest depth (autodiff and recompute), each precision against
float32, and the deepest against the shallowest variant of a series.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

FIELDS = ("model", "architecture", "family", "block", "units_per_stage", "depth", "mode", "precision", "batch_size",
          "input_size", "peak_bytes",
          "activation_bytes", "activation_bytes_per_image", "batch1_peak_bytes", "peak_rss_bytes", "step_seconds",
          "grad_rel_err", "recon_rel_err")

MB = 1e6
# Architectures with a reversible mode: their reversible rows are compared with their own autodiff twin.
REVERSIBLE_ARCHITECTURES = ("revnet", "revvit")


def _units(row: Dict) -> str:
    return "-".join(map(str, row["units_per_stage"]))


def _key(row: Dict, **changes):
    """Identity of a row's setting: (model, units, mode, precision, batch)."""
    values = dict(model=row["model"], units=_units(row), mode=row["mode"], precision=row["precision"],
                  batch=row["batch_size"])
    values.update(changes)
    return tuple(values[k] for k in ("model", "units", "mode", "precision", "batch"))


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "-"


def _error(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_table(rows: List[Dict]) -> List[str]:
    header = (f"{'model':<12}{'units':<13}{'depth':>6} {'mode':<11}{'prec':<8}{'batch':>6}{'peak MB':>9}"
              f"{'act. MB':>9}{'MB/img':>8}{'step s':>8}{'grad err':>10}{'recon err':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['model']:<12}{_units(row):<13}{row['depth']:>6} {row['mode']:<11}{row['precision']:<8}"
                     f"{row['batch_size']:>6}{row['peak_bytes'] / MB:>9.1f}{row['activation_bytes'] / MB:>9.1f}"
                     f"{row['activation_bytes_per_image'] / MB:>8.2f}{row['step_seconds']:>8.3f}"
                     f"{_error(row.get('grad_rel_err')):>10}{_error(row.get('recon_rel_err')):>10}")
    return lines


def matching_resnet(rows: List[Dict], revnet_row: Dict, mode: str) -> Optional[Dict]:
    """The ResNet row (given mode) of the same family, block, precision and batch, nearest in depth."""
    candidates = [r for r in rows if r["architecture"] == "resnet" and r["mode"] == mode
                  and r["family"] == revnet_row["family"] and r["block"] == revnet_row["block"]
                  and r["precision"] == revnet_row["precision"] and r["batch_size"] == revnet_row["batch_size"]]
    return min(candidates, key=lambda r: abs(r["depth"] - revnet_row["depth"]), default=None)


def comparisons(rows: List[Dict]) -> List[str]:
    """Per reversible RevNet row: peak, activations and time against its autodiff and the ResNet baselines."""
    by_key = {_key(row): row for row in rows}
    lines = []
    for row in rows:
        if row["architecture"] not in REVERSIBLE_ARCHITECTURES or row["mode"] != "reversible":
            continue
        label = f"{row['model']} [{_units(row)}] {row['precision']} batch {row['batch_size']}"
        own = by_key.get(_key(row, mode="autodiff"))
        if own:
            lines.append(f"{label}: reversible/autodiff peak {_ratio(row['peak_bytes'], own['peak_bytes'])}, "
                         f"act. {_ratio(row['activation_bytes'], own['activation_bytes'])}, "
                         f"time {_ratio(row['step_seconds'], own['step_seconds'])}; grad err "
                         f"{_error(row.get('grad_rel_err'))} vs {_error(own.get('grad_rel_err'))} "
                         f"({_ratio(row.get('grad_rel_err') or 0, own.get('grad_rel_err') or 0)})")
        for mode in ("recompute", "autodiff"):
            resnet = matching_resnet(rows, row, mode)
            if resnet:
                lines.append(f"{label}: reversible / {resnet['model']} [{_units(resnet)}] {mode}: "
                             f"peak {_ratio(row['peak_bytes'], resnet['peak_bytes'])}, act. "
                             f"{_ratio(row['activation_bytes'], resnet['activation_bytes'])}, per image "
                             f"{row['activation_bytes_per_image'] / MB:.2f} vs "
                             f"{resnet['activation_bytes_per_image'] / MB:.2f} MB")
    lines += marginal_per_image(rows)
    for row in rows:
        if row["precision"] != "float32":
            base = by_key.get(_key(row, precision="float32"))
            if base:
                lines.append(f"{row['model']} [{_units(row)}] {row['mode']} batch {row['batch_size']}: "
                             f"{row['precision']}/float32 peak {_ratio(row['peak_bytes'], base['peak_bytes'])}, "
                             f"act. {_ratio(row['activation_bytes'], base['activation_bytes'])}, "
                             f"time {_ratio(row['step_seconds'], base['step_seconds'])}")
    return lines


def marginal_per_image(rows: List[Dict]) -> List[str]:
    """Per setting measured at two or more batch sizes: activation MB per added image between the smallest
    and the largest batch (what decides the batch that fits), and the reversible row's ratio to its baselines."""
    grouped: Dict[tuple, List[Dict]] = {}
    for row in rows:
        grouped.setdefault(_key(row, batch=None), []).append(row)
    slopes = {}
    for key, members in grouped.items():
        members = sorted(members, key=lambda r: r["batch_size"])
        small, large = members[0], members[-1]
        if large["batch_size"] > small["batch_size"]:
            slopes[key] = ((large["activation_bytes"] - small["activation_bytes"])
                           / (large["batch_size"] - small["batch_size"]), small, large)
    lines = []
    for slope, small, large in slopes.values():
        text = (f"{small['model']} [{_units(small)}] {small['mode']} {small['precision']}: "
                f"{slope / MB:.2f} MB per added image (batch {small['batch_size']} -> {large['batch_size']})")
        if small["architecture"] == "revnet" and small["mode"] == "reversible":
            for mode in ("autodiff", "recompute"):
                resnet = matching_resnet(rows, small, mode)
                other = slopes.get(_key(resnet, batch=None)) if resnet else None
                if other:
                    text += f"; {_ratio(slope, other[0])} {resnet['model']} {mode}"
        lines.append(text)
    return lines


def series(rows: List[Dict]) -> Dict[tuple, List[Dict]]:
    """Rows grouped into lines of the depth plot: (architecture, mode, block, precision, batch) -> rows by depth."""
    grouped: Dict[tuple, List[Dict]] = {}
    for row in rows:
        key = (row["architecture"], row["mode"], row["block"], row["family"], row["precision"], row["batch_size"])
        grouped.setdefault(key, []).append(row)
    return {key: sorted(members, key=lambda r: r["depth"]) for key, members in grouped.items()}


def growth(rows: List[Dict]) -> List[str]:
    lines = []
    for (architecture, mode, block, _, precision, batch), members in series(rows).items():
        if len(members) >= 2 and members[0]["depth"] != members[-1]["depth"]:
            shallow, deep = members[0], members[-1]
            lines.append(f"{architecture} {mode} ({block}, {precision}, batch {batch}): depth {shallow['depth']} -> "
                         f"{deep['depth']}: peak x{deep['peak_bytes'] / shallow['peak_bytes']:.2f}, "
                         f"activations x{deep['activation_bytes'] / max(shallow['activation_bytes'], 1):.2f}")
    return lines


def _with_config_fields(row: Dict) -> Dict:
    """Rows read back from JSON written before these fields were saved get them from the registry."""
    if "architecture" in row:
        return row
    from revnet.models.registry import get_config

    config = get_config(row["model"])
    return dict(row, architecture=config.architecture, family=config.family, block=config.block)


def format_rows(rows: List[Dict]) -> str:
    """The table, then the ratios that matter and the growth with depth."""
    rows = [_with_config_fields(row) for row in rows]
    lines = format_table(rows)
    compared = comparisons(rows)
    if compared:
        lines += ["", "Comparisons (same run):"] + compared
    grown = growth(rows)
    if grown:
        lines += ["", "Growth with depth (deepest / shallowest measured):"] + grown
    lines += ["", "act. = peak minus the same step's peak at batch 1 (weights, optimizer state, the batch-independent "
                  "conv back-prop workspace); MB/img = act. / (batch - 1). grad err = max over the input and every "
                  "variable of ||g - g_ref|| / ||g_ref||, g_ref from float64 autodiff with the same weights; recon err "
                  "= worst per-stage ||x_rec - x|| / ||x||."]
    return "\n".join(lines)


LABELS = {("resnet", "autodiff"): ("ResNet, autodiff", "s"), ("resnet", "recompute"): ("ResNet, recompute", "D"),
          ("revnet", "autodiff"): ("RevNet, autodiff", "o"), ("revnet", "recompute"): ("RevNet, recompute", "v"),
          ("revnet", "reversible"): ("RevNet, reversible", "^"), ("revvit", "autodiff"): ("RevViT, autodiff", "x"),
          ("revvit", "recompute"): ("RevViT, recompute", "+"), ("revvit", "reversible"): ("RevViT, reversible", "*")}


def plot_rows(rows: List[Dict], path: str) -> None:
    """Peak and activation memory against depth, one line per (architecture, mode) series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = series(rows)
    panels = ((axes[0], "peak_bytes", "allocator peak"), (axes[1], "activation_bytes", "activation memory"))
    for axis, key, title in panels:
        for (architecture, mode, block, _family, precision, batch), members in lines.items():
            if len(members) < 2:
                continue
            label, marker = LABELS[(architecture, mode)]
            axis.plot([r["depth"] for r in members], [r[key] / MB for r in members], marker=marker,
                      label=f"{label} ({block}, {precision}, batch {batch})")
        axis.set_xlabel("depth (layers)")
        axis.set_ylabel("MB")
        axis.set_title(f"Training step, {title}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if rows:
        figure.suptitle(f"{rows[0]['device']}, TF allocator, `cli.py benchmark memory`")
    figure.tight_layout()
    tmp_path = path + ".tmp.png"
    figure.savefig(tmp_path, dpi=100)
    plt.close(figure)
    os.replace(tmp_path, path)
