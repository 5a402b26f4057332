"""The search space: one decision variable per unit and technique, built from an analysis.

The Space asks each registered technique for its variables; it knows no technique by name.
"""

from __future__ import annotations

import random
from typing import Any

from ..errors import InvalidCandidateError
from .analysis import ModelAnalysis
from .candidate import Candidate
from .technique import Variable, registered, technique

__all__ = ["Candidate", "SpaceOptions", "Space", "Variable"]


class SpaceOptions:
    """Which values each technique's decisions may take: one keyword per registered technique
    (its ``option``: ``prune_ratios``, ``bit_widths``, ``rank_ratios``, ``skip_blocks``,
    ``shrink_kernels``, ``sparsity_ratios``), plus the channel multiple kept channel counts are
    rounded to."""

    def __init__(self, *, channel_multiple: int = 8, **options: Any) -> None:
        by_option = {t.option: t for t in registered()}
        unknown = sorted(set(options) - set(by_option))
        if unknown:
            raise TypeError(f"SpaceOptions got unknown options {unknown}; known: {sorted(by_option)} and channel_multiple")
        if channel_multiple < 1:
            raise ValueError(f"channel_multiple must be >= 1, got {channel_multiple=}")
        values = {name: t.read_option(options.get(name, t.default_option)) for name, t in by_option.items()}
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "channel_multiple", channel_multiple)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"SpaceOptions has no option {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("SpaceOptions are immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, SpaceOptions) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "SpaceOptions(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {**self._values, "channel_multiple": self.channel_multiple}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpaceOptions":
        """From JSON (lists for tuples), e.g. what ``to_dict`` wrote or a search recorded."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class Space:
    """All decision variables of one model, built from its analysis."""

    def __init__(self, analysis: ModelAnalysis, options: SpaceOptions | None = None) -> None:
        self.analysis = analysis
        self.options = options or SpaceOptions()
        self.variables = [v for t in registered(in_space_order=True) for v in t.variables(analysis, self.options)]
        self._by_name = {v.name: v for v in self.variables}

    def __len__(self) -> int:
        return len(self.variables)

    def default(self) -> Candidate:
        """The uncompressed model."""
        return Candidate(channel_multiple=self.options.channel_multiple)

    def from_params(self, params: dict[str, Any]) -> Candidate:
        """Build a Candidate from ``{variable name: value}`` (an Optuna trial's params)."""
        fields: dict[str, dict] = {t.kind: {} for t in registered()}
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
            if technique(var.kind).ordered:
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
            params[var.name] = draw if rng.random() < density else self.neutral(var)
        return self.from_params(params)

    @staticmethod
    def neutral(var: Variable):
        """The value of ``var`` that leaves the model uncompressed."""
        return technique(var.kind).neutral_value(var)

    def value_of(self, candidate: Candidate, var: Variable):
        """``candidate``'s value of ``var``: the one it decides, else the uncompressed one."""
        return candidate.of(var.kind).get(var.unit, self.neutral(var))

    def params_of(self, candidate: Candidate) -> dict:
        """``candidate`` as the trial parameters that make ``suggest`` return it (what a queued trial takes)."""
        return {var.name: self.value_of(candidate, var) for var in self.variables}

    def changed(self, candidate: Candidate) -> list[str]:
        """Names of the variables whose value in ``candidate`` differs from the uncompressed model."""
        return [v.name for v in self.variables if self.value_of(candidate, v) != self.neutral(v)]

    def validate(self, candidate: Candidate) -> None:
        """Raise InvalidCandidateError when a decision names a unit or value this space lacks."""
        for t in registered():
            kind = t.kind
            decisions = candidate.of(kind)
            if decisions and not any(v.kind == kind for v in self.variables):
                raise InvalidCandidateError(
                    f"Candidate makes {kind} decisions, but this space offers none (SpaceOptions {t.option}="
                    f"{getattr(self.options, t.option)!r}); offer them (the CLI's --{t.option.replace('_', '-')})")
            for unit, value in decisions.items():
                var = self._by_name.get(f"{kind}/{unit}")
                if var is None:
                    raise InvalidCandidateError(
                        f"Candidate {kind} names {unit!r}, which is not a {kind} unit of this model; "
                        "run `autocompress inspect` to list the units")
                if value not in var.choices:
                    raise InvalidCandidateError(
                        f"Candidate {kind}[{unit!r}] = {value!r} is not allowed; choose one of {list(var.choices)}")

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options.to_dict(), "variables": [
            {"name": v.name, "kind": v.kind, "unit": v.unit, "choices": list(v.choices)} for v in self.variables]}


def _suggest_ordered(trial, var: Variable):
    """Ordered choices on an even grid are suggested as a stepped float so TPE can exploit their order."""
    choices = sorted(var.choices)
    steps = {round(b - a, 9) for a, b in zip(choices, choices[1:])}
    if len(steps) == 1:
        value = trial.suggest_float(var.name, choices[0], choices[-1], step=steps.pop())
        return min(choices, key=lambda c: abs(c - value))  # undo float drift from the step grid
    return trial.suggest_categorical(var.name, choices)
