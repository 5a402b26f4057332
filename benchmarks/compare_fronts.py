"""Compare the fronts of finished searches (for example the same search run locally and on Ray).

For each search folder: trials finished, front points under budget, best accuracy under budget,
and the hypervolume of the front in the accuracy/latency plane (reference: accuracy 0 at the
budget), the usual single-number measure of front quality. Writes results/NAME.{md,json}.

    python benchmarks/compare_fronts.py runs/demo runs/demo_ray --labels local ray --name ray_vs_local_front
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocompress.search.folder import SearchFolder
from autocompress.search.pareto import best_under, hypervolume_2d, pareto_front, records_from_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--name", default="front_comparison")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    labels = args.labels or [str(f) for f in args.folders]

    rows = []
    for label, folder in zip(labels, args.folders, strict=True):
        meta = json.loads((folder / "search.json").read_text())
        study = SearchFolder(folder).load_study()
        records = records_from_study(study)
        front = pareto_front(records)
        budget = meta["budget_ms"]
        under = [p for p in front if p.latency_ms <= budget]
        best = best_under(front, budget)
        rows.append({
            "label": label, "folder": str(folder), "trials": sum(r.state == "complete" for r in records),
            "budget_ms": budget, "front_under_budget": len(under),
            "best_accuracy_under_budget": best.accuracy if best else None,
            "hypervolume": hypervolume_2d(under, ref_latency_ms=budget),
        })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"# Front quality: {' vs '.join(labels)}", "",
             "Hypervolume: area dominated by the front under the budget in the (accuracy, latency) plane, reference "
             "accuracy 0 at the budget (higher is better). Command: `python benchmarks/compare_fronts.py "
             + " ".join(str(f) for f in args.folders) + "`.", "",
             "| search | trials | front under budget | best accuracy under budget | hypervolume (ms) |",
             "|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r["best_accuracy_under_budget"] is None else f"{100 * r['best_accuracy_under_budget']:.2f}%"
        lines.append(f"| {r['label']} | {r['trials']} | {r['front_under_budget']} | {best} | {r['hypervolume']:.4f} |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
