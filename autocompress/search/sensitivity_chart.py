"""The sensitivity table as a picture: one panel per technique, one row per unit, its damage per value.

Damages span orders of magnitude (an int8 layer next to a skipped block), so the colour is the
logarithm of the damage above the floor; a value a unit does not offer is left blank.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..train.sensitivity import Sensitivities

__all__ = ["plot_sensitivities"]

_MAX_ROWS = 60  # more units than this and the labels overlap: the most damaged are shown


def plot_sensitivities(path: Path, table: Sensitivities) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_kind: dict[str, dict[str, dict[str, float]]] = {}
    for variable, values in table.by_variable().items():
        kind, unit = variable.split("/", 1)
        by_kind.setdefault(kind, {})[unit] = values
    if not by_kind:
        return
    floor = max(table.floor, 1e-9)
    heights = [min(len(units), _MAX_ROWS) for units in by_kind.values()]
    fig, axes = plt.subplots(len(by_kind), 1, figsize=(8, 1.2 + 0.18 * sum(heights) + 0.6 * len(by_kind)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    image = None
    for ax, (kind, units) in zip(axes[:, 0], by_kind.items()):
        columns = sorted({v for values in units.values() for v in values}, key=_value_order)
        shown = sorted(units, key=lambda u: -max(units[u].values()))[:_MAX_ROWS]
        shown.sort(key=list(units).index)  # model order among the shown
        grid = [[math.log10(max(units[u][c], floor)) if c in units[u] else math.nan for c in columns] for u in shown]
        image = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=math.log10(floor), interpolation="nearest")
        ax.set_title(f"{kind}" + (f" (the {_MAX_ROWS} most damaging of {len(units)})" if len(units) > _MAX_ROWS else ""),
                     fontsize=9, loc="left")
        ax.set_xticks(range(len(columns)), columns, fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=6)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="log10 KL above the floor (nats)", shrink=0.6)
    fig.suptitle("Damage of each decision alone on the trained model (BatchNorm recalibrated, no fine-tune)",
                 fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _value_order(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
