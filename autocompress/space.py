"""The search space (one decision variable per unit and technique) and the Candidate it yields.

A Candidate is plain data: it crosses process and Ray borders as JSON, and applying the same
Candidate to the same model always builds the same weights. Decisions a Candidate leaves out take
their "no compression" value, so ``Candidate()`` is the original model.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from .analysis import LayerUnit, ModelAnalysis
from .errors import InvalidCandidateError

__all__ = ["Candidate", "SpaceOptions", "Space", "Variable", "rank_for"]

_KINDS = ("prune", "bits", "rank", "skip", "kernel")
_NEUTRAL = {"prune": 0.0, "bits": 32, "rank": 1.0, "skip": False}  # kernel: its first choice, the current size


@dataclass(frozen=True)
class Candidate:
    """One point of a Space: per-group pruning ratios, per-layer bits and rank ratios, NAS choices."""

    prune: dict[str, float] = field(default_factory=dict)  # channel group id -> ratio in [0, 1)
    bits: dict[str, int] = field(default_factory=dict)  # layer -> 32, 16, 8 or 4
    rank: dict[str, float] = field(default_factory=dict)  # layer -> rank ratio, 1.0 = not factorized
    skip: dict[str, bool] = field(default_factory=dict)  # residual block -> replaced by identity
    kernel: dict[str, int] = field(default_factory=dict)  # conv layer -> kernel size
    channel_multiple: int = 1  # kept channel counts are rounded to this multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        if not isinstance(data, dict):
            raise InvalidCandidateError(f"a Candidate must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KINDS) - {"channel_multiple"})
        if unknown:
            raise InvalidCandidateError(f"Candidate has unknown fields {unknown}; allowed: {list(_KINDS) + ['channel_multiple']}")
        try:
            return cls(
                prune={str(k): float(v) for k, v in data.get("prune", {}).items()},
                bits={str(k): int(v) for k, v in data.get("bits", {}).items()},
                rank={str(k): float(v) for k, v in data.get("rank", {}).items()},
                skip={str(k): bool(v) for k, v in data.get("skip", {}).items()},
                kernel={str(k): int(v) for k, v in data.get("kernel", {}).items()},
                channel_multiple=int(data.get("channel_multiple", 1)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidCandidateError(f"Candidate fields must map names to numbers ({exc})") from exc

    @classmethod
    def from_json(cls, text: str) -> "Candidate":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidCandidateError(f"Candidate is not valid JSON ({exc})") from exc

    def ratio(self, group_id: str) -> float:
        return self.prune.get(group_id, 0.0)

    def bits_of(self, layer: str) -> int:
        return self.bits.get(layer, 32)

    def rank_ratio(self, layer: str) -> float:
        return self.rank.get(layer, 1.0)


def rank_for(ratio: float, full_rank: int) -> int | None:
    """The rank a ratio asks for, or None when the layer stays whole (ratio 1.0)."""
    if ratio >= 1.0:
        return None
    return max(1, int(math.floor(ratio * full_rank + 0.5)))


@dataclass(frozen=True)
class SpaceOptions:
    """Which values each kind of decision may take."""

    prune_ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    bit_widths: tuple[int, ...] = (32, 16, 8, 4)
    rank_ratios: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    channel_multiple: int = 8
    skip_blocks: bool = True
    shrink_kernels: bool = True

    def __post_init__(self) -> None:
        if not self.prune_ratios or 0.0 not in self.prune_ratios or any(not 0.0 <= r < 1.0 for r in self.prune_ratios):
            raise ValueError(f"prune_ratios must include 0.0 and lie in [0, 1), got {self.prune_ratios=}")
        if not self.bit_widths or any(b not in (32, 16, 8, 4) for b in self.bit_widths) or 32 not in self.bit_widths:
            raise ValueError(f"bit_widths must include 32 and be among 32, 16, 8, 4, got {self.bit_widths=}")
        if not self.rank_ratios or 1.0 not in self.rank_ratios or any(not 0.0 < r <= 1.0 for r in self.rank_ratios):
            raise ValueError(f"rank_ratios must include 1.0 and lie in (0, 1], got {self.rank_ratios=}")
        if self.channel_multiple < 1:
            raise ValueError(f"channel_multiple must be >= 1, got {self.channel_multiple=}")


@dataclass(frozen=True)
class Variable:
    """One decision: its name (``kind/unit``), the unit it acts on and the values it may take."""

    kind: str
    unit: str
    choices: tuple

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.unit}"


class Space:
    """All decision variables of one model, built from its analysis."""

    def __init__(self, analysis: ModelAnalysis, options: SpaceOptions | None = None) -> None:
        self.analysis = analysis
        self.options = options or SpaceOptions()
        self.variables = self._variables()
        self._by_name = {v.name: v for v in self.variables}

    def _variables(self) -> list[Variable]:
        opts, a = self.options, self.analysis
        out = [Variable("prune", g.id, tuple(sorted(opts.prune_ratios))) for g in a.prunable_groups
               if len(sorted(opts.prune_ratios)) > 1 and g.channels > opts.channel_multiple]
        out += [Variable("bits", u.name, tuple(sorted(opts.bit_widths, reverse=True))) for u in a.layers
                if len(opts.bit_widths) > 1]
        for u in a.layers:
            useful = _params_saving_ratios(u, opts.rank_ratios) if u.factorizable else ()
            if len(useful) > 1:
                out.append(Variable("rank", u.name, useful))
        if opts.skip_blocks:
            out += [Variable("skip", b.name, (False, True)) for b in a.blocks]
        if opts.shrink_kernels:
            out += [Variable("kernel", k.layer, k.options) for k in a.kernels]
        return out

    def __len__(self) -> int:
        return len(self.variables)

    def default(self) -> Candidate:
        """The uncompressed model."""
        return Candidate(channel_multiple=self.options.channel_multiple)

    def from_params(self, params: dict[str, Any]) -> Candidate:
        """Build a Candidate from ``{variable name: value}`` (an Optuna trial's params)."""
        fields: dict[str, dict] = {k: {} for k in _KINDS}
        for name, value in params.items():
            var = self._by_name.get(name)
            if var is None:
                raise InvalidCandidateError(f"parameter {name!r} is not a variable of this space")
            fields[var.kind][var.unit] = value
        candidate = Candidate(**fields, channel_multiple=self.options.channel_multiple)
        self.validate(candidate)
        return candidate

    def suggest(self, trial) -> Candidate:
        """Ask an Optuna trial for a value of every variable."""
        params = {}
        for var in self.variables:
            if var.kind in ("prune", "rank"):
                params[var.name] = _suggest_ordered(trial, var)
            else:
                params[var.name] = trial.suggest_categorical(var.name, list(var.choices))
        return self.from_params(params)

    def sample(self, rng: random.Random, *, density: float = 1.0) -> Candidate:
        """A random Candidate (tests, warm starts, predictor training).

        Each variable is drawn uniformly with probability ``density`` and otherwise keeps its
        uncompressed value: a low density gives lightly compressed models, which still classify
        without fine-tuning.
        """
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must lie in [0, 1], got {density=}")
        params = {}
        for var in self.variables:
            draw = rng.choice(var.choices)  # drawn either way, so a seed gives the same draws at any density
            params[var.name] = draw if rng.random() < density else self._neutral(var)
        return self.from_params(params)

    @staticmethod
    def _neutral(var: Variable):
        return _NEUTRAL.get(var.kind, var.choices[0])

    def changed(self, candidate: Candidate) -> list[str]:
        """Names of the variables whose value in ``candidate`` differs from the uncompressed model."""
        return [v.name for v in self.variables
                if getattr(candidate, v.kind).get(v.unit, self._neutral(v)) != self._neutral(v)]

    def validate(self, candidate: Candidate) -> None:
        """Raise InvalidCandidateError when a decision names a unit or value this space lacks."""
        for kind in _KINDS:
            for unit, value in getattr(candidate, kind).items():
                var = self._by_name.get(f"{kind}/{unit}")
                if var is None:
                    raise InvalidCandidateError(
                        f"Candidate {kind} names {unit!r}, which is not a {kind} unit of this model; "
                        "run `autocompress inspect` to list the units")
                if value not in var.choices:
                    raise InvalidCandidateError(
                        f"Candidate {kind}[{unit!r}] = {value!r} is not allowed; choose one of {list(var.choices)}")

    def to_dict(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "variables": [
            {"name": v.name, "kind": v.kind, "unit": v.unit, "choices": list(v.choices)} for v in self.variables]}


def _suggest_ordered(trial, var: Variable):
    """Ordered choices on an even grid are suggested as a stepped float so TPE can exploit their order."""
    choices = sorted(var.choices)
    steps = {round(b - a, 9) for a, b in zip(choices, choices[1:])}
    if len(steps) == 1:
        value = trial.suggest_float(var.name, choices[0], choices[-1], step=steps.pop())
        return min(choices, key=lambda c: abs(c - value))  # undo float drift from the step grid
    return trial.suggest_categorical(var.name, choices)


def _params_saving_ratios(unit: LayerUnit, ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Rank ratios that make the two factors smaller than the layer (1.0 always stays)."""
    k_h, k_w = unit.kernel_size
    fan_in = unit.in_channels * k_h * k_w
    full = min(unit.out_channels, fan_in)
    kept = [r for r in sorted(set(ratios), reverse=True)
            if r >= 1.0 or rank_for(r, full) * (fan_in + unit.out_channels) < unit.out_channels * fan_in]
    return tuple(kept)
