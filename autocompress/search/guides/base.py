"""The Guide: what steers a search besides its sampler, behind one small interface.

A guide decides four things, and the driver asks it nothing else:

- the ``Damage`` the repair (``boundary``) ranks its moves by;
- the seeds the study starts from, in the order they are fine-tuned (``seeds``);
- whether a proposal is worth its fine-tune (``screen``);
- what it learns after each fine-tune, and the candidates that makes it queue (``learn``).

Each guide is one module of this package, registered by name in ``guides.GUIDES``; its tunables
are a small frozen ``Config`` that search.json records. Optuna's samplers are built the same
way: one module each behind a base class, chosen by the user, never tested for by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import optuna

from ...core.space import Candidate
from ..budget import ChanceConstraint
from ..damage import MAC_SHARE, Damage
from ..seeds import Seed, hand_policy_seeds

__all__ = ["Guide", "NoTunables"]


@dataclass(frozen=True)
class NoTunables:
    """The config of a guide with nothing to tune."""


class Guide:
    name: ClassVar[str]
    Config: ClassVar[type] = NoTunables
    # Whether the search measures each decision's damage alone (``train.sensitivity``) before the
    # guide starts: the guide then reads them from ``problem.sensitivities``.
    needs_sensitivities: ClassVar[bool] = False

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else self.Config()
        self.problem = self.study = self.predictor = None
        self.budget_ms, self.chance = float("inf"), ChanceConstraint(0.5)

    def start(self, problem, study: optuna.Study, budget_ms: float, chance: ChanceConstraint, *,
              predictor=None) -> None:
        """Bind to a search about to run its trials (``problem``: its ``SearchProblem``;
        ``predictor``: latency as the search reads it, ``latency_pipeline.CorrectedPredictor``;
        default: the problem's hardware model)."""
        self.problem, self.study, self.budget_ms, self.chance = problem, study, budget_ms, chance
        self.predictor = predictor if predictor is not None else problem.hardware

    def damage(self) -> Damage:
        """What the repair ranks moves by, now."""
        return MAC_SHARE

    def seeds(self) -> list[Seed]:
        """The candidates the study starts from, in the order they are to be fine-tuned."""
        return hand_policy_seeds(self.problem.space)

    def screen(self, origin: str, candidate: Candidate, latency_ms: float, size_bytes: int) -> str | None:
        """Why a proposal (``origin``: where it came from) need not be fine-tuned, or None."""
        return None

    def learn(self) -> list[Seed]:
        """Learn from the study's fine-tunes (asked when the trials start, a resumed study's included,
        and after each fine-tune that ran to the end); the candidates to queue."""
        return []

    def status(self) -> str:
        """A few words for the progress bar ("" for none)."""
        return ""

    def config_dict(self) -> dict:
        return asdict(self.config)
