"""search.json: what a search searched (its identity, problem, budget, baseline, host level), written
when its trials start, and what it found out on the way (the measurements near the budget), added
when it stops. Every write replaces the whole file atomically: a reader never meets half of one."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..files import write_text_atomic
from ..hardware.host_level import HostLevel

__all__ = ["record_in_search_json", "write_search_json"]


def write_search_json(path: Path, settings, problem, budget_ms: float, host_level: HostLevel | None) -> None:
    """``settings``: the ``SearchSettings``; ``problem``: the ``SearchProblem`` as it starts its trials."""
    write_text_atomic(path, json.dumps({
        "identity": settings.identity(),
        "problem": settings.problem.to_dict(),
        "budget": settings.budget,
        "budget_ms": budget_ms,
        "baseline": problem.baseline_summary(),
        "baseline_training": problem.baseline_training,  # steps, why it stopped; None: not trained here
        "finetune": asdict(settings.finetune),
        "settings": settings.to_dict(),  # by concern: what is searched, how latency is judged, where it runs
        "space_size": len(problem.space),
        "cells": {"blocks": len(problem.analysis.cells), "distilled": len(problem.cell_weights),
                  "losses": "cells/losses.csv" if problem.cell_weights else None},
        "host_level": host_level.to_dict() if host_level is not None else None,
        "level_from": None if host_level is None else "own candidates (latency/own_candidates.csv)"
        if host_level.baseline_ms is not None else "the hardware model's reference candidates",
        # what the accuracy objective is (the task's score, on the validation split) and the splits:
        # the test split is held out of every choice, and the card scores the export on it
        "score": problem.score.name,
        "data": problem.splits.describe(),
    }, indent=2, default=str) + "\n")


def record_in_search_json(path: Path, **entries) -> None:
    """Add ``entries`` to the search.json at ``path`` (keeping what it holds)."""
    recorded = json.loads(Path(path).read_text())
    write_text_atomic(path, json.dumps({**recorded, **entries}, indent=2, default=str) + "\n")
