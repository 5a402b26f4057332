"""NAS cell choices: each block a search-space file matches becomes one of its cells (``cell/<block>``).

It applies first, so every other technique acts on the chosen cell: the layers a cell keeps keep
their names, and the pruning ratio, bit width and rank decided for such a layer apply to the
cell's (a narrowed group is pruned by its ratio of the cell's width). A cell that does not
reproduce its block exactly takes the weights blockwise distillation learned for it when the
search has them (``ApplyContext.cell_weights``), else the ones it inherits.
"""

from __future__ import annotations

from ..core.cell_choices import ORIGINAL, SKIP
from ..core.cells import build_cell
from ..core.modules import set_submodule
from ..core.technique import ModelShapes, Technique, Variable, blocks_by_entry, layer_mac_share, read_flag, register

__all__ = ["CellChoices", "cell_key"]

_SKIP_PENALTY = 0.02  # as a skipped block's: a whole stage of computation goes


def cell_key(block: str, cell: str) -> str:
    """How a cell's distilled weights are named (``ApplyContext.cell_weights``, the search folder)."""
    return f"{block}/{cell}"


class CellChoices(Technique):
    kind = "cell"
    order = 5
    position = 70  # after every earlier technique, so seeded draws of spaces without cells reproduce
    value_type = str
    neutral = ORIGINAL
    option = "cells"
    default_option = True

    def read_option(self, value):
        return read_flag(self.option, value)

    def variables(self, analysis, options) -> list[Variable]:
        if not options.cells:
            return []
        # A tied block follows its leader's decision (``cell_choices.with_followers``): no variable of its own.
        return [Variable(self.kind, c.block, c.names) for c in analysis.cells if c.tied_to is None]

    def apply(self, model, candidate, context) -> None:
        chosen = {c.block: c for c in context.analysis.cells}
        for block, name in sorted(candidate.cell.items()):
            if name == ORIGINAL:
                continue
            choice = chosen[block]
            cell = build_cell(model.get_submodule(block), choice.option(name).spec, choice.input_shape)
            learned = context.cell_weights.get(cell_key(block, name))
            if learned is not None:
                cell.load_state_dict(learned)
            set_submodule(model, block, cell.eval())

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        chosen, swaps = {c.block: c for c in analysis.cells}, []
        for block, name in sorted(candidate.cell.items()):
            if name == ORIGINAL:
                continue
            option = chosen[block].option(name)
            if name == SKIP:
                shapes.removed.append(block)
            else:
                swaps.append((block, option.layers, option.norms, dict(option.follows)))
        shapes.replace_blocks(swaps, blocks_by_entry(analysis, chosen))

    def mac_share(self, analysis, unit: str) -> float:
        return layer_mac_share(analysis, sum(c.macs for c in analysis.cells if unit in (c.block, c.tied_to)))

    def repair_moves(self, var, value, share):
        # The choices stand costliest first (skip last): one step down the list is one move, its
        # damage the share of the model's MACs the block holds, scaled by how far down it goes.
        position = var.choices.index(value)
        if position + 1 < len(var.choices):
            target = var.choices[position + 1]
            yield target, share * (position + 1) / len(var.choices) + (_SKIP_PENALTY if target == SKIP else 0.0)

    def summary(self, values: dict) -> str | None:
        changed = {block: name for block, name in values.items() if name != ORIGINAL}
        if not changed:
            return None
        return "cells " + "; ".join(f"{block}: {changed[block]}" for block in sorted(changed, key=_model_order))

    def describe(self, var: Variable) -> str:
        return f"cell {{{', '.join(var.choices)}}}"


def _model_order(name: str) -> list:
    """``features.2`` before ``features.10``: block names in the order a model lists them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


register(CellChoices())
