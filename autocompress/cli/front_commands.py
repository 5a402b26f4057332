"""The commands that read a finished or running search: ``pareto`` (its front) and ``export``
(one of its points as ONNX, fine-tuned and timed, with its card)."""

from __future__ import annotations

import json
import sys

from ..errors import AutocompressError

__all__ = ["_export", "_pareto"]


def _pareto(args) -> int:
    from ..search.folder import SearchFolder
    from ..search.pareto import TrialRecord, summary_table

    folder = SearchFolder(args.dir)
    if getattr(args, "test", False):
        from ..export.front_test import front_on_test, front_on_test_table
        from ..train.task import load_task

        scored = front_on_test(args.dir, task=load_task(args.task) if args.task else None)
        print(json.dumps(scored, indent=2) if args.json else front_on_test_table(scored))
        return 0
    try:
        front = folder.live_front()  # a running search's front too
    except AutocompressError as exc:
        if folder.search_json.is_file() and not (args.dir / "pareto.json").is_file():
            raise  # a search whose study cannot be read, and nothing else to show
        front = folder.load_front()  # with its own error when that is missing or damaged too
        print(f"autocompress: showing pareto.json, written when the search last stopped: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(front, indent=2))
        return 0
    points = [TrialRecord.from_dict(p) for p in front["points"]]
    print(summary_table(points, budget_ms=front["budget_ms"], baseline=front["baseline"]))
    return 0


def _export(args) -> int:
    from ..export.card import BUSY_LOAD, busy_warning, export_from_search

    card = export_from_search(args.dir, args.out, trial=args.trial, best_under_budget=args.best_under,
                              finetune_steps=args.finetune_steps, retrain=args.retrain)
    lat, acc, selection = card["latency"], card["accuracy"], card["selection"]
    if selection is not None:
        within = sum(t["fits"] for t in selection["timed"])
        print(f"chose trial {selection['chosen']} by measurement: {len(selection['timed'])} front points timed before "
              f"fine-tuning, {within} within {selection['limit_ms']:.3f} ms (card.md lists them)")
        if not selection["fits"]:
            print("Warning: no front point measured within the budget; exported the fastest measured. Loosen "
                  "--best-under or search longer.", file=sys.stderr)
    print(f"trial {card['trial']}: latency predicted {lat['predicted_ms']:.3f} ms, measured {lat['measured_ms']:.3f} ms "
          f"({100 * lat['prediction_error']:+.1f}%); baseline measured {lat['baseline_measured_ms']:.3f} ms "
          f"({lat['ratio_to_baseline']:.2f}x); budget {card['budget_ms']:.3f} ms")
    print(f"accuracy: baseline {100 * acc['baseline']:.2f}%, after {acc['finetune_steps']} steps "
          f"{'retraining' if acc.get('retrained') else 'distilling'} "
          f"{100 * acc['after_finetune_torch']:.2f}% (PyTorch), {100 * acc['after_finetune_onnx']:.2f}% (ONNX Runtime)")
    print(f"written: {args.out / 'model.onnx'}, {args.out / 'weights.pt'}, {args.out / 'card.json'}, "
          f"{args.out / 'card.md'}")
    if lat["background_load"] > BUSY_LOAD:
        print(busy_warning(lat["background_load"]), file=sys.stderr)
    return 0
