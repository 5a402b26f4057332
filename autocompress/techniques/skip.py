"""Skip a residual block: the block becomes the identity (an architecture choice that inherits
the weights of everything around it)."""

from __future__ import annotations

from ..core.analysis import SkippedBlock
from ..core.cell_choices import SKIP
from ..core.modules import set_submodule
from ..core.technique import ModelShapes, Technique, Variable, layer_mac_share, read_flag, register

__all__ = ["SkipBlocks"]

_PENALTY = 0.02  # a skip removes a whole stage of computation: more damage than its MAC share says


class SkipBlocks(Technique):
    kind = "skip"
    order = 10
    position = 40
    value_type = bool
    neutral = False
    option = "skip_blocks"
    default_option = True
    in_every_candidate_json = True

    def read_option(self, value):
        return read_flag(self.option, value)

    def variables(self, analysis, options) -> list[Variable]:
        if not options.skip_blocks:
            return []
        # A block whose cells include skip is skipped through its cell choice, one decision for both.
        by_cell = {c.block for c in analysis.cells if SKIP in c.names} if options.cells else set()
        return [Variable(self.kind, b.name, (False, True)) for b in analysis.blocks if b.name not in by_cell]

    def apply(self, model, candidate, context) -> None:
        for block, skip in sorted(candidate.skip.items()):
            if skip:
                set_submodule(model, block, SkippedBlock())

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        shapes.removed += [block for block, skip in sorted(candidate.skip.items()) if skip]

    def mac_share(self, analysis, unit: str) -> float:
        return layer_mac_share(analysis, sum(b.macs for b in analysis.blocks if b.name == unit))

    def repair_moves(self, var, value, share):
        if not value:
            yield True, share + _PENALTY

    def summary(self, values: dict) -> str | None:
        skipped = sum(1 for v in values.values() if v)
        return f"{skipped} block{'' if skipped == 1 else 's'} skipped" if skipped else None

    def describe(self, var: Variable) -> str:
        return "skip"


register(SkipBlocks())
