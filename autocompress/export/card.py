"""Export one point of a search's front: fine-tune it longer, write ONNX, measure it, write its card.

The card puts what the search predicted beside what the exported model measures, with the
baseline exported and timed the same way in the same run, so every ratio compares like with like.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from ..core.candidate import candidate_summary
from ..core.space import Candidate
from ..errors import AutocompressError
from ..files import atomic_path, write_text_atomic
from ..hardware import machine_info
from ..hardware.measure import SWEEPS, measure_in_sweeps
from ..search.budget import Budget
from ..search.folder import SearchFolder
from ..search.pareto import TrialRecord, records_from_study
from ..search.problem import build_problem
from ..train.data import calibration_batches
from .outputs import onnx_outputs, outputs_beside
from ..train.finetune import DistillationConfig
from ..train.training import TRAINING_LR, top1
from .apply import export_beside_baseline
from .confirm import SLACK, choose_by_measurement

__all__ = ["BUSY_LOAD", "busy_warning", "choose_trial", "export_from_search", "write_card"]

log = logging.getLogger(__name__)


def choose_trial(records: list[TrialRecord], trial: int, search_dir: Path) -> TrialRecord:
    """The finished, fine-tuned trial numbered ``trial`` among a search's records."""
    chosen = next((r for r in records if r.number == trial), None)
    if chosen is None or chosen.state != "complete" or chosen.status not in ("evaluated", "stopped_early"):
        raise AutocompressError(f"trial {trial} is not a finished, fine-tuned trial of {search_dir}; "
                                f"`autocompress pareto {search_dir}` lists the front", parameters=("trial",))
    return chosen


def export_from_search(search_dir: Path, out: Path, *, trial: int | None = None, best_under_budget: str | None = None,
                       finetune_steps: int = 300, passes: int = 15, runs: int = 30, sweeps: int = SWEEPS,
                       pause_s: float = 20.0, retrain: bool = False, task=None) -> dict:
    """Rebuild the chosen candidate, fine-tune it ``finetune_steps`` steps, export and measure it.

    ``trial``: that trial. ``best_under_budget`` (5ms or 0.5x): the most accurate front point that
    *measures* within it, timed before any fine-tuning (``confirm.choose_by_measurement``).
    ``retrain``: train on the labels alone at the baseline's learning rate instead of distilling.
    ``task``: the Task object a search from Python was made with (a named one is made again)."""
    search_dir, out = Path(search_dir), Path(out)
    if (trial is None) == (best_under_budget is None):
        raise AutocompressError("give exactly one of trial N or best_under_budget LATENCY (5ms or 0.5x)",
                                parameters=("trial", "best_under_budget"))
    budget = Budget.parse(best_under_budget, flag="--best-under") if best_under_budget is not None else None
    records = records_from_study(_open_search_study(search_dir))
    chosen = choose_trial(records, trial, search_dir) if trial is not None else None
    folder = SearchFolder(search_dir)
    settings = folder.settings()
    host_level = folder.host_level()  # predict as the search did
    problem = build_problem(folder.spec(), cache_dir=search_dir, host_level=host_level, task=task)
    selection = None
    if budget is not None:
        selection = choose_by_measurement(problem, records, budget, sweeps=sweeps, pause_s=pause_s, passes=passes,
                                          runs=runs)
        if selection is None:
            raise AutocompressError(f"no front point of {search_dir} is predicted within {100 * SLACK:.0f}% of "
                                    f"--best-under {budget} "
                                    f"({budget.resolve(problem.baseline_ms):.3f} ms); loosen --best-under or run more "
                                    "trials")
        chosen = selection.chosen
    candidate = Candidate.from_dict(chosen.candidate)
    problem.space.validate(candidate)
    config = replace(DistillationConfig(**_tuples(settings["finetune"])), steps=finetune_steps, checkpoints=())
    if retrain:  # Once-for-All's deployment: the subnet's inherited weights trained on, as a network of its own
        config = replace(config, alpha=0.0, lr=TRAINING_LR)
    student, result = problem.finetune(candidate, config)

    out.mkdir(parents=True, exist_ok=True)
    exported, val, baseline_onnx = export_beside_baseline(
        student, problem.baseline, problem.example, out, problem.splits.val,
        calibration=calibration_batches(problem.splits.train))
    test = score_beside(problem, student, exported.path, baseline_onnx)
    with atomic_path(out / "weights.pt") as partial:
        torch.save(student.state_dict(), partial)
    shape = tuple(problem.example.shape)
    (base_t, base_sweeps), (model_t, model_sweeps) = measure_in_sweeps(
        [(baseline_onnx, shape), (exported.path, shape)], sweeps=sweeps, pause_s=pause_s, passes=passes, runs=runs)
    predicted = problem.predict(candidate)
    size = problem.size_bytes(candidate)
    score = problem.score
    onnx_accuracy = score(val.onnx, val.targets)
    card = {
        "search": str(search_dir),
        "trial": chosen.number,
        "model": problem.spec.model,
        "dataset": problem.spec.dataset,
        "input_shape": list(shape),
        "budget": settings["budget"],
        "budget_ms": settings["budget_ms"],
        "candidate": candidate.to_dict(),
        "latency": {
            "predicted_ms": predicted.ms,
            "predicted_std_ms": predicted.std_ms,
            "measured_ms": model_t.best_ms,
            "measured_median_ms": model_t.median_ms,
            "measured_p90_ms": model_t.p90_ms,
            "measured_sweeps_ms": model_sweeps,
            "prediction_error": predicted.ms / model_t.best_ms - 1.0,
            # what the search's front says of this point: measured before its fine-tune, or predicted
            # and corrected by the candidates timed near it; the plain prediction above knows neither
            "stated_ms": chosen.latency_ms,
            "stated_measured": chosen.latency_measured,
            "stated_error": chosen.latency_ms / model_t.best_ms - 1.0,
            "baseline_predicted_ms": problem.baseline_ms,
            # what predictions were scaled by: the host's level when the search started (1: the profile's)
            "host_level": problem.hardware.level,
            "baseline_measured_ms": base_t.best_ms,
            "baseline_measured_median_ms": base_t.median_ms,
            "baseline_measured_sweeps_ms": base_sweeps,
            "ratio_to_baseline": model_t.best_ms / base_t.best_ms,
            "measured_over_budget": model_t.best_ms / settings["budget_ms"],
            "protocol": f"{model_t.provider}, {model_t.threads} thread(s), {sweeps} sweeps {pause_s:g} s "
                        f"apart, each {passes} interleaved passes of {runs} runs; measured = fastest run of all, as "
                        "the hardware model is fit",
            "background_load": model_t.background_load,
        },
        "accuracy": {
            "baseline": problem.baseline_accuracy,
            "search_finetune": chosen.accuracy,
            "search_finetune_steps": chosen.finetune_steps,
            # PyTorch after export: its quantizers now carry ORT's calibration, as weights.pt does
            "after_finetune_torch": score(val.torch, val.targets),
            "after_finetune_torch_before_export": result.accuracy,
            "after_finetune_onnx": onnx_accuracy,
            "finetune_steps": finetune_steps,
            "retrained": retrain,
            "top1_agreement_torch_onnx": top1(val.torch, val.onnx),
            "drop_points": 100 * (problem.baseline_accuracy - onnx_accuracy),
            # the score's name, and the split the values above are on: the one the search chose with
            "score": score.name,
            "split": "validation",
        },
        # the same scores on the test split, which no choice of the search or of --best-under saw
        "test": test,
        "size": {
            "bytes": size,
            "baseline_bytes": problem.baseline_bytes,
            "ratio_to_baseline": size / problem.baseline_bytes,
            "onnx_file_bytes": exported.file_bytes,
            # ONNX stores every weight dense: zipped is what a download costs (sparse weights pay off there)
            "onnx_zipped_bytes": exported.zipped_bytes,
        },
        "onnx_nodes_by_bits": {str(b): len(n) for b, n in sorted(exported.nodes_by_bits.items())},
        "files": {"model": "model.onnx", "weights": "weights.pt", "baseline": "baseline.onnx"},
        "machine": machine_info(),
        # how --best-under chose: the front points timed before fine-tuning, most accurate first
        "selection": selection.to_dict() if selection is not None else None,
    }
    write_card(out, card)
    return card


def score_beside(problem, student, model_onnx: Path, baseline_onnx: Path) -> dict | None:
    """The task's score of the baseline and of the exported model (in PyTorch and in ONNX Runtime)
    on the test split, and where that split comes from; None where the task has no test split."""
    if problem.splits.test is None:
        return None
    model = outputs_beside(student, model_onnx, problem.splits.test)
    baseline = onnx_outputs(baseline_onnx, problem.splits.test)
    return {"score": problem.score.name, "source": problem.splits.test_source, "images": len(problem.splits.test),
            "baseline": problem.score(baseline, model.targets), "exported_torch": problem.score(model.torch, model.targets),
            "exported_onnx": problem.score(model.onnx, model.targets)}


def write_card(out: Path, card: dict) -> None:
    write_text_atomic(out / "card.json", json.dumps(card, indent=2) + "\n")
    lat, acc, size = card["latency"], card["accuracy"], card["size"]
    lines = [
        f"# {card['model']} on {card['dataset']}: trial {card['trial']} of {card['search']}",
        "",
        f"Budget {card['budget']} = {card['budget_ms']:.3f} ms (predicted baseline latency "
        f"{lat['baseline_predicted_ms']:.3f} ms).",
        "",
        f"Architecture and compression: {candidate_summary(card['candidate'])}.",
        "",
        "| | predicted | measured | baseline (measured) | ratio to baseline |",
        "|---|---|---|---|---|",
        f"| latency (ms) | {lat['predicted_ms']:.3f} ± {lat['predicted_std_ms']:.3f} | {lat['measured_ms']:.3f} "
        f"(median {lat['measured_median_ms']:.3f}) | {lat['baseline_measured_ms']:.3f} | "
        f"{lat['ratio_to_baseline']:.2f}x |",
        f"| size (KB) | {size['bytes'] / 1024:.1f} | ONNX file {size['onnx_file_bytes'] / 1024:.1f}, zipped "
        f"{size.get('onnx_zipped_bytes', 0) / 1024:.1f} | "
        f"{size['baseline_bytes'] / 1024:.1f} | {size['ratio_to_baseline']:.2f}x |",
        "",
        f"Prediction error: {100 * lat['prediction_error']:+.1f}% of the measured latency; measured latency is "
        f"{lat['measured_over_budget']:.2f}x the budget."
        + (f" The search's front stated {lat['stated_ms']:.3f} ms for it "
           f"({'measured before its fine-tune' if lat['stated_measured'] else 'predicted, corrected near the budget'}"
           f"; {100 * lat['stated_error']:+.1f}% of this measurement)." if "stated_ms" in lat else "")
        + (f" Predictions are at the host's level when the search started ({lat['host_level']:.3f}x the hardware "
           "model's, `--calibrate-host`)." if lat.get("host_level", 1.0) != 1.0 else ""),
        "",
        *_selection_lines(card.get("selection")),
        *_score_lines(acc, card.get("test")),
        f"Measurement: {lat['protocol']}. Machine: {card['machine'].get('cpu')}.",
        "",
        *([busy_warning(lat["background_load"]), ""] if lat["background_load"] > BUSY_LOAD else []),
        "To rebuild in PyTorch: `apply_candidate(baseline, Candidate.from_dict(card['candidate']), analysis, example)`, "
        "then `load_state_dict(torch.load('weights.pt', weights_only=True))`.",
        "",
    ]
    write_text_atomic(out / "card.md", "\n".join(lines))


def _score_lines(acc: dict, test: dict | None) -> list[str]:
    """The score table: validation (what the search chose on) beside test (what no choice saw)."""
    def shown(value) -> str:
        return "" if value is None else f"{100 * value:.2f}%"

    name = acc.get("score", "accuracy")
    t = test or {}
    lines = [f"| {name} | validation | test |", "|---|---|---|",
             f"| baseline | {shown(acc['baseline'])} | {shown(t.get('baseline'))} |",
             f"| after the search's fine-tune ({acc['search_finetune_steps']} steps) | "
             f"{shown(acc['search_finetune'] or 0)} | |",
             f"| after {acc['finetune_steps']} steps, PyTorch | {shown(acc['after_finetune_torch'])} | "
             f"{shown(t.get('exported_torch'))} |",
             f"| after {acc['finetune_steps']} steps, ONNX Runtime | {shown(acc['after_finetune_onnx'])} | "
             f"{shown(t.get('exported_onnx'))} |", ""]
    lines.append(f"Top-1 agreement of ONNX Runtime with PyTorch on validation: "
                 f"{100 * acc['top1_agreement_torch_onnx']:.1f}%. " +
                 (f"Test split: {t['images']} items, {t['source']}; no choice of the search saw it."
                  if test else "The task has no test split: these scores are on the split the search chose with."))
    return lines + [""]


def _selection_lines(selection: dict | None) -> list[str]:
    """How --best-under chose: the front points timed before fine-tuning, most accurate first."""
    if not selection:
        return []
    verdict = ("the most accurate that measured within the budget" if selection["fits"] else
               "none measured within the budget, so the fastest measured; loosen --best-under or search longer")
    lines = [f"Chosen by measurement: trial {selection['chosen']}, {verdict}. Front points predicted up to "
             f"{100 * selection['slack']:.0f}% over the budget were exported untrained and timed beside the baseline; "
             f"the limit is the budget less {100 * selection['margin']:.0f}% for measurement noise:",
             "", "| trial | search accuracy | predicted (ms) | measured (ms) | limit (ms) | within |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t['trial']} | {100 * t['accuracy']:.2f}% | {t['predicted_ms']:.3f} | {t['measured_ms']:.3f} | "
              f"{t['limit_ms']:.3f} | {'yes' if t['fits'] else 'no'} |" for t in selection["timed"]]
    return lines + [""]


BUSY_LOAD = 0.25  # other cores busier than this while timing: the measured figures are suspect


def busy_warning(load: float) -> str:
    return (f"Warning: the machine's other cores were {100 * load:.0f}% busy while timing; interference only adds "
            "time, so the measured latencies may be too high. Re-run the export on an idle machine.")


def _open_search_study(search_dir: Path) -> optuna.Study:
    study = SearchFolder(search_dir).load_study(fix="restore it from a copy, or export from another search")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise AutocompressError(f"{search_dir}: no trial has finished yet; let the search run longer")
    return study


def _tuples(config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
