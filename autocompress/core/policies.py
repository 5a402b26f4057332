"""The simple hand policies (uniform pruning, int8 everywhere) as trial parameters of a Space:
the search's warm starts, and candidates profiling times so the predictor knows them well."""

from __future__ import annotations

from .space import Space

__all__ = ["WARM_START_RATIOS", "warm_start_policies"]

WARM_START_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75)


def warm_start_policies(space: Space) -> dict[str, dict]:
    """The simple hand policies, as trial parameters: every layer int8, uniform pruning + int8, and
    every block with cell choices at its cheapest cell (in float and in int8). Uniform pruning cuts
    a transformer's attention heads in the same share as its FFN widths (Torch-Pruning's uniform
    head and FFN pruning).

    Uniform pruning in float is there too: on ORT's CPU kernels int8 is not always the faster
    precision (MobileNet-V2's small depthwise convs at 32x32 run slower in int8)."""
    neutral = {v.name: Space.neutral(v) for v in space.variables}
    int8 = {v.name: 8 for v in space.variables if v.kind == "bits" and 8 in v.choices}
    policies = {"int8": neutral | int8}
    prune_vars = [v for v in space.variables if v.kind == "prune"]
    ratios = [r for r in WARM_START_RATIOS if prune_vars and all(r in v.choices for v in prune_vars)]
    for ratio in ratios:
        policies[f"uniform-{ratio:g}-int8"] = neutral | int8 | _uniform(space, prune_vars, ratio)
    for ratio in ratios:
        policies[f"uniform-{ratio:g}-fp32"] = neutral | _uniform(space, prune_vars, ratio)
    # Cells stand costliest first and skip last: the cheapest cell that keeps the block is the last other.
    cheapest = {v.name: [c for c in v.choices if c != "skip"][-1] for v in space.variables if v.kind == "cell"}
    if cheapest:
        policies["cheapest-cells"] = neutral | cheapest
        policies["cheapest-cells-int8"] = neutral | int8 | cheapest
    return policies


def _uniform(space: Space, prune_vars, ratio: float) -> dict:
    """Every channel group pruned by ``ratio``, and every attention's heads cut by the count of its
    choices nearest that share of its heads (the choices are counts cut, 0 first, on an even grid)."""
    params = {v.name: ratio for v in prune_vars}
    for v in space.variables:
        if v.kind == "heads" and len(v.choices) > 1:
            heads = v.choices[-1] + (v.choices[1] - v.choices[0])
            params[v.name] = min(v.choices, key=lambda cut: abs(cut - ratio * heads))
    return params
