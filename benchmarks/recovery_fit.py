"""What the fine-tune gives back, by technique: the recovery weights fitted offline on every
fine-tuned trial the search_vs_hand_policy benchmark left in its folders, all guides pooled.

A search fits its recovery weights (``search.recovery_weights``) on its own fine-tuned trials
only, a few dozen at the start. Pooled over a cell's three guides (one to two hundred trials), the
same fit says what the weights tend to once the evidence is plentiful, and whether the weighted
damage ranks held-out trials (5-fold) better than the raw sum: the check a search applies before
it trusts them. Nothing is trained or timed here; the searches must have run first
(``benchmarks/search_vs_hand_policy.py --work runs/bench``).

Writes results/recovery_fit.{md,json}.

    python benchmarks/recovery_fit.py --work runs/bench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocompress.core.space import Candidate
from autocompress.errors import AutocompressError
from autocompress.search.folder import SearchFolder
from autocompress.search.problem import ProblemSpec, build_problem
from autocompress.search.recovery_weights import fit_recovery_weights

CELLS = ("resnet18@0.05x", "resnet18@0.5x", "mobilenet_v2@0.25x", "mobilenet_v2@0.5x")
GUIDES = ("surrogate", "macs", "sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help="model@budget, e.g. resnet18@0.5x")
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    cells = []
    for cell in args.cells:
        spec, at, budget = cell.partition("@")
        if not (spec and at and budget):
            parser.error(f"--cells {cell}: give model@budget, e.g. resnet18@0.5x")
        cells.append((cell, spec, budget))

    rows = []
    for cell, spec, budget in cells:
        try:
            # The trials first: a cell with no searches must not train a baseline to say so.
            candidates, accuracies, guides = _finetuned(args.work / spec / budget)
            if not candidates:
                parser.error(f"{cell}: no fine-tuned trials under {args.work / spec / budget}; run "
                             f"benchmarks/search_vs_hand_policy.py --cells {cell} --work {args.work} first")
            # the baseline and the sensitivities are read from the benchmark's cache, not measured again
            problem = build_problem(ProblemSpec(model=spec), cache_dir=args.work / spec)
        except AutocompressError as exc:
            parser.error(f"--cells {cell}: {exc}")
        damage = problem.with_sensitivities(args.work / spec).sensitivities.kl
        fit = fit_recovery_weights(problem.space, damage, candidates, accuracies)
        rows.append({"cell": cell, "guides": guides, **fit.to_dict()})
        print(cell, fit.to_dict(), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recovery_fit.json").write_text(json.dumps({"cells": rows}, indent=1) + "\n")
    (args.out / "recovery_fit.md").write_text(_markdown(rows))
    print(f"written: {args.out / 'recovery_fit.md'}")


def _finetuned(cell_folder: Path) -> tuple[list[Candidate], list[float], list[str]]:
    """Every fine-tuned trial of the cell's searches (all guides that ran): candidates, accuracies, guides."""
    candidates, accuracies, guides = [], [], []
    for guide in GUIDES:
        folder = SearchFolder(cell_folder / guide)
        if not folder.search_json.is_file():  # that guide's search never ran here
            continue
        for t in folder.load_study().get_trials(deepcopy=False):
            if t.user_attrs.get("status") == "evaluated":
                candidates.append(Candidate.from_dict(t.user_attrs["candidate"]))
                accuracies.append(t.values[0])
        guides.append(guide)
    return candidates, accuracies, guides


def _markdown(rows: list[dict]) -> str:
    lines = ["# Recovery weights fitted on every fine-tuned trial of the benchmark's searches", "",
             "Each cell's fine-tuned trials of all its guides pooled; the accuracy each lost (to the best) fitted "
             "as a non-negative combination of its measured damage by technique, the weights scaled to the largest "
             "and floored at 0.02 (`search.recovery_weights`). Spearman: the weighted damage (5-fold held out) and "
             "the raw sum against the fine-tuned accuracy. Command: `python benchmarks/recovery_fit.py`.", "",
             "| cell | guides | trials | weights | weighted, held out | raw sum | trusted |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        weights = ", ".join(f"{k} {v:.2g}" for k, v in sorted(r["weights"].items()))
        lines.append(f"| {r['cell']} | {', '.join(r['guides'])} | {r['trials']} | {weights} | "
                     f"{_rho(r['held_out_spearman'])} | {_rho(r['raw_spearman'])} | {'yes' if r['trusted'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _rho(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
