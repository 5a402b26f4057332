"""The front on the test split: each front point fine-tuned again as the search fine-tuned it, and
scored on the split no choice saw, beside the validation score the search chose it by.

After a hundred trials, the best validation scores read optimistic: each is the maximum of many
noisy draws on the same images. This shows by how much, point by point (``autocompress pareto
--test``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.space import Candidate
from ..errors import AutocompressError
from ..search.folder import SearchFolder
from ..search.problem import build_problem
from ..train.finetune import DistillationConfig

__all__ = ["front_on_test", "front_on_test_table"]


def front_on_test(search_dir: Path, *, task=None) -> dict:
    """Every front point of the search in ``search_dir``: its validation score in the search, the
    same fine-tune's validation score now, and its test score; the baseline's too. ``task``: the
    Task object a search from Python was made with."""
    folder = SearchFolder(search_dir)
    settings = folder.settings()
    front = folder.live_front()
    problem = build_problem(folder.spec(), cache_dir=Path(search_dir), host_level=folder.host_level(), task=task)
    if problem.splits.test is None:
        raise AutocompressError(f"the task of {search_dir} has no test split; give the Task a test split to score "
                                "its front on", parameters=("task",))
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in settings["finetune"].items()}
    config = DistillationConfig(**recorded)
    points = []
    for point in front["points"]:
        steps = point.get("finetune_steps") or config.steps
        student, result = problem.finetune(Candidate.from_dict(point["candidate"]),
                                           replace(config, steps=steps, checkpoints=()))
        points.append({"number": point["number"], "latency_ms": point["latency_ms"], "finetune_steps": steps,
                       "validation_search": point["accuracy"], "validation": result.accuracy,
                       "test": problem.test_score(student)})
    return {"score": problem.score.name, "test_source": problem.splits.test_source,
            "test_items": len(problem.splits.test), "budget_ms": front["budget_ms"],
            "baseline": {"validation": problem.baseline_accuracy, "test": problem.test_score(problem.baseline),
                         "latency_ms": problem.baseline_ms},
            "points": points}


def front_on_test_table(scored: dict) -> str:
    """``front_on_test``'s result as an aligned plain-text table, baseline first."""
    name = scored["score"]
    header = ["trial", "latency ms", f"{name} % val (search)", "val (again)", "test", "test - val"]
    base = scored["baseline"]
    rows = [["base", f"{base['latency_ms']:.3f}", f"{100 * base['validation']:.2f}", "", f"{100 * base['test']:.2f}",
             f"{100 * (base['test'] - base['validation']):+.2f}"]]
    for p in scored["points"]:
        rows.append([str(p["number"]), f"{p['latency_ms']:.3f}", f"{100 * p['validation_search']:.2f}",
                     f"{100 * p['validation']:.2f}", f"{100 * p['test']:.2f}",
                     f"{100 * (p['test'] - p['validation_search']):+.2f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines + [f"test split: {scored['test_items']} items, {scored['test_source']}"])
