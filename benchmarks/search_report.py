"""results/search_vs_hand_policy.{md,json} from the report ``search_vs_hand_policy.py`` builds."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["bars"] = bars(report)
    (out / "search_vs_hand_policy.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Search against the simple policies, and its guides against each other", "",
             f"digits at 32x32, {report['trials']} trials of {report['finetune_steps']} distillation steps, seed 0, "
             "the CLI's defaults (chance-constrained budget at 0.9, candidates near the budget timed in the loop). "
             "The baseline and the measured sensitivities are shared by a model's searches. Hypervolume: "
             "accuracy above chance (10% on digits) times the latency below the budget (as the study was told: "
             "predicted, or measured where the search timed the point), over the fine-tuned trials. Timed points: "
             "every warm start (those told over the budget fine-tuned here, as the search would have) and the "
             "search-found front under the budget, exported untrained and timed together with the baseline by "
             "the export card's "
             "protocol (fastest of 3 sweeps 20 s apart, each 15 interleaved passes). Exports fine-tuned "
             f"{report['export_steps']} steps. Machine: {report['machine']['cpu']}. Command: "
             "`python benchmarks/search_vs_hand_policy.py`.", "",
             "| cell | guide | minutes | trials by status | fine-tunes | fine-tunes to 99% of its hypervolume | "
             "fine-tunes to 99% of the cell's best | hypervolume | best warm start under budget (predicted) | "
             "best search-found under budget (predicted) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cell, guides in report["cells"].items():
        best = max(e["hypervolume"] for e in guides.values())
        for guide, e in guides.items():
            to_best = next((k + 1 for k, v in enumerate(e["hypervolume_curve"]) if v >= 0.99 * best), None)
            lines.append(f"| {cell} | {guide} | {e['search_minutes']:.1f} | {_statuses(e['trials_by_status'])} | "
                         f"{e['finetunes']} | {e['finetunes_to_99pct'] or '-'} | {to_best or 'never'} | "
                         f"{e['hypervolume']:.4f} | "
                         f"{_predicted(e['best_warm_start_predicted'])} | "
                         f"{_predicted(e['best_search_found_predicted'])} |")
    fits = [(cell, guide, e["accuracy_model"]) for cell, guides in report["cells"].items()
            for guide, e in guides.items() if e.get("accuracy_model")]
    if fits:
        lines += ["", "The accuracy model at the end of each surrogate search: Spearman's rank correlation with the "
                  "fine-tuned accuracy of its held-out trials (5-fold), beside the rankings by the additive damage, "
                  "by the additive damage weighted by technique as the recovery weights learned it (held out too), "
                  "and by the candidates' own measured damage, over the same trials; the weights themselves, and "
                  "after how many fine-tunes allocations were built on them:", "",
                  "| cell | guide | trials | held-out | additive damage | weighted damage | own damage | "
                  "recovery weights | reallocated after |", "|---|---|---|---|---|---|---|---|---|"]
        for cell, guide, f in fits:
            recovery = report["cells"][cell][guide].get("recovery_weights") or {}
            weights = ", ".join(f"{k} {w:.2g}" for k, w in recovery.get("weights", {}).items())
            again = report["cells"][cell][guide].get("reallocated_at") or []
            lines.append(f"| {cell} | {guide} | {f['trials']} | {_rho(f.get('held_out_spearman'))} | "
                         f"{_rho(f.get('prior_spearman'))} | {_rho(recovery.get('held_out_spearman'))} | "
                         f"{_rho(f.get('joint_spearman'))} | {weights or '-'} | "
                         f"{', '.join(map(str, again)) or '-'} |")
    for cell, guides in report["cells"].items():
        for guide, e in guides.items():
            if "measured" in e:
                lines += ["", f"## {cell}, guide {guide}", ""] + _measured_lines(e, report["export_steps"])
    lines += ["", "## Bars", ""] + [f"- {b['bar']}: {b['verdict']}" for b in report["bars"]]
    (out / "search_vs_hand_policy.md").write_text("\n".join(lines) + "\n")


def _measured_lines(e: dict, export_steps: int) -> list[str]:
    m, b = e["measured"], e["baseline"]
    lines = [f"Baseline: accuracy {_pct(b['accuracy'])}, measured {m['baseline_measured_ms']:.3f} ms (predicted "
             f"{b['latency_ms']:.3f}); budget {e['budget_ms']:.3f} ms.", "",
             "| point | trial | origin | accuracy | predicted ms | measured ms |", "|---|---|---|---|---|---|"]
    for p in sorted(m["points"], key=lambda p: (not p["warm_start"], p["measured_ms"])):
        kind = "search-found" if not p["warm_start"] else (
            "warm start (told over the budget)" if p.get("told_over_budget") else "warm start")
        lines.append(f"| {kind} | {p['trial']} | {p['origin']} | "
                     f"{_pct(p['accuracy'])} | {p['latency_ms']:.3f} | {p['measured_ms']:.3f} |")
    v = m["warm_vs_found"]
    if v:
        w, at, fast = v["best_warm_start"], v["best_found_at_no_more_latency"], v["fastest_found_at_no_less_accuracy"]
        lines += ["", ("Best warm start within the budget (measured)" if v.get("warm_start_within_budget", True)
                       else "No warm start measures within the budget; the fastest") +
                  f": trial {w['trial']} ({w['origin']}) {_pct(w['accuracy'])} at "
                  f"{w['measured_ms']:.3f} ms measured. Best search-found at no more measured latency: "
                  + (f"trial {at['trial']} {_pct(at['accuracy'])} at {at['measured_ms']:.3f} ms" if at else "none")
                  + ". Fastest search-found at no less accuracy: "
                  + (f"trial {fast['trial']} {_pct(fast['accuracy'])} at {fast['measured_ms']:.3f} ms "
                     f"({w['measured_ms'] / fast['measured_ms']:.2f}x faster)" if fast else "none") + "."]
    close = m["fastest_within_half_a_point"]
    if close:
        lines += ["", f"Fastest timed point within 0.5 points of the baseline: trial {close['trial']} "
                  f"{_pct(close['accuracy'])} at {close['measured_ms']:.3f} ms, "
                  f"{m['speedup_within_half_a_point']:.2f}x faster than the baseline measured."]
    x = e.get("export_best")
    if x:
        sel = e["selection"]
        lines += ["", f"`export --best-under {e['budget']}`: trial {x['trial']}, predicted {x['predicted_ms']:.3f} ms, "
                  f"measured {x['measured_ms']:.3f} ms ({x['measured_over_budget']:.2f} of the budget measured, "
                  f"{x['ratio_to_baseline']:.3f}x the baseline measured), ONNX accuracy {_pct(x['accuracy_onnx'])} "
                  f"after {export_steps} steps (drop {x['drop_points']:+.2f} points). Timed first: "
                  + ", ".join(f"trial {t['trial']} {t['predicted_ms']:.3f} predicted / {t['measured_ms']:.3f} measured"
                              for t in sel["timed"]) + f" (limit {sel['limit_ms']:.3f} ms)."]
    return lines


def bars(report: dict) -> list[dict]:
    """The issue's bars, each with what this report shows for it."""
    out = []
    measured = {cell: e for cell, guides in report["cells"].items() for e in guides.values() if "measured" in e}
    verdicts = {cell: (e["measured"]["warm_vs_found"] or {}).get("met") for cell, e in measured.items()}
    out.append({"bar": "best search-found point >= 1 point more accurate than the best warm start at no more "
                       "measured latency, or >= 1.3x faster at no less accuracy, on every cell",
                "verdict": ", ".join(f"{c}: {'met' if v else 'not met'}" for c, v in verdicts.items()) or "not run"})
    mobile = [e["measured"]["speedup_within_half_a_point"] for c, e in measured.items() if c.startswith("mobilenet_v2")]
    mobile = [s for s in mobile if s]
    out.append({"bar": "mobilenet_v2: a point >= 2.5x faster than the baseline (measured) within 0.5 points",
                "verdict": f"best {max(mobile):.2f}x" if mobile else "not run"})
    halves = []
    for cell, guides in report["cells"].items():
        if "surrogate" in guides and "macs" in guides:
            s, m = guides["surrogate"]["finetunes_to_99pct"], guides["macs"]["finetunes_to_99pct"]
            ratio = guides["surrogate"]["hypervolume"] / max(guides["macs"]["hypervolume"], 1e-12)
            halves.append(f"{cell}: {s} vs {m} ({'met' if s and m and 2 * s <= m else 'not met'}; the surrogate's "
                          f"final hypervolume is {ratio:.2f}x the macs one's)")
    out.append({"bar": "surrogate reaches 99% of its hypervolume in at most half the fine-tunes of macs, on 3 of 4 "
                       "cells", "verdict": "; ".join(halves) or "not run"})
    picks = []
    for cell, e in measured.items():
        x = e.get("export_best")
        if not x:
            continue
        best = max((p for p in e["front"] if p["latency_ms"] <= e["budget_ms"]), key=lambda p: p["accuracy"])
        chosen = next((p for p in e["front"] if p["trial"] == x["trial"]), None)
        gap = 100 * (best["accuracy"] - chosen["accuracy"]) if chosen else None
        ok = x["measured_over_budget"] <= 1.0 and gap is not None and gap <= 0.5
        picks.append(f"{cell}: measured {x['measured_over_budget']:.2f} of the budget, "
                     f"{'-' if gap is None else f'{gap:.2f}'} points under the most accurate predicted under it "
                     f"({'met' if ok else 'not met'})")
    out.append({"bar": "export --best-under measures within the budget and within 0.5 points of the most accurate "
                       "front point predicted under it, on every cell", "verdict": "; ".join(picks) or "not run"})
    return out


def _statuses(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _predicted(point: dict | None) -> str:
    if point is None:
        return "-"
    return f"{_pct(point['accuracy'])} @ {point['latency_ms']:.3f} ms (trial {point['trial']}, {point['origin']})"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _rho(value) -> str:
    return "-" if value is None else f"{value:.2f}"
