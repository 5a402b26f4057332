"""The Candidate: one point of a Space, the single currency of the product.

A Candidate is plain data: for each registered technique, ``{unit: value}``, plus the channel
multiple. It crosses process and Ray borders as JSON, and applying the same Candidate to the same
model always builds the same weights. Decisions it leaves out take their "no compression" value,
so ``Candidate()`` is the original model. Fields read as attributes (``candidate.prune``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..errors import InvalidCandidateError
from .technique import registered

__all__ = ["Candidate", "candidate_summary"]


class Candidate:
    """``Candidate(prune={group: ratio}, bits={layer: 8}, ..., channel_multiple=8)``."""

    __slots__ = ("_decisions", "channel_multiple")

    def __init__(self, *, channel_multiple: int = 1, **decisions: Mapping[str, Any]) -> None:
        kinds = [t.kind for t in registered()]
        unknown = sorted(set(decisions) - set(kinds))
        if unknown:
            raise InvalidCandidateError(f"Candidate has unknown fields {unknown}; allowed: {kinds + ['channel_multiple']}")
        object.__setattr__(self, "_decisions", {kind: dict(decisions.get(kind) or {}) for kind in kinds})
        object.__setattr__(self, "channel_multiple", channel_multiple)

    def __getattr__(self, name: str) -> dict:
        try:
            return object.__getattribute__(self, "_decisions")[name]
        except KeyError:
            raise AttributeError(f"Candidate has no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("a Candidate is immutable: use .replace(...)")

    def __eq__(self, other) -> bool:
        return isinstance(other, Candidate) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._decisions.items() if v)
        return f"Candidate({fields}{', ' if fields else ''}channel_multiple={self.channel_multiple})"

    def __reduce__(self):
        return (_from_plain, (self.to_dict(),))

    def of(self, kind: str) -> dict:
        """The decisions of one technique: ``{unit: value}``."""
        return self._decisions[kind]

    def replace(self, **changes) -> "Candidate":
        """A copy with some fields (``prune={...}``, ``channel_multiple=...``) replaced whole."""
        fields = {**self._decisions, "channel_multiple": self.channel_multiple, **changes}
        return Candidate(**fields)

    def with_decision(self, kind: str, unit: str, value: Any) -> "Candidate":
        return self.replace(**{kind: self._decisions[kind] | {unit: value}})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in registered():
            values = self._decisions[t.kind]
            if values or t.in_every_candidate_json:
                out[t.kind] = dict(values)
        out["channel_multiple"] = self.channel_multiple
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        if not isinstance(data, dict):
            raise InvalidCandidateError(f"a Candidate must be a JSON object, got {type(data).__name__}")
        kinds = {t.kind: t for t in registered()}
        unknown = sorted(set(data) - set(kinds) - {"channel_multiple"})
        if unknown:
            raise InvalidCandidateError(f"Candidate has unknown fields {unknown}; allowed: {list(kinds) + ['channel_multiple']}")
        try:
            fields = {kind: {str(k): t.value_type(v) for k, v in data.get(kind, {}).items()}
                      for kind, t in kinds.items()}
            return cls(**fields, channel_multiple=int(data.get("channel_multiple", 1)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidCandidateError(f"Candidate fields must map names to numbers ({exc})") from exc

    @classmethod
    def from_json(cls, text: str) -> "Candidate":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidCandidateError(f"Candidate is not valid JSON ({exc})") from exc


def _from_plain(data: dict) -> Candidate:
    return Candidate.from_dict(data)


def candidate_summary(candidate: Mapping[str, Any]) -> str:
    """A few words on a Candidate dict, e.g. '3 groups pruned (mean 38%), 5 layers int8, 1 block skipped'."""
    parts = [t.summary(dict(candidate.get(t.kind) or {})) for t in registered(in_space_order=True)]
    return ", ".join(p for p in parts if p) or "uncompressed"
