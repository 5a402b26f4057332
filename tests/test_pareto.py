"""Front, best point, hypervolume and result files, on a real in-memory Optuna study built by hand."""

from __future__ import annotations

import csv
import json

import optuna
import pytest

from autocompress.errors import AutocompressError, ResultsError
from autocompress.search.folder import load_front, write_results
from autocompress.core.candidate import candidate_summary
from autocompress.search.pareto import (
    TrialRecord,
    best_under,
    hypervolume_2d,
    pareto_front,
    records_from_study,
    summary_table,
)

BUDGET_MS = 5.0
BASELINE = {"accuracy": 0.92, "latency_ms": 10.0, "size_bytes": 4000}
DIRECTIONS = ["maximize", "minimize", "minimize"]


def _add(study, accuracy, latency, size, *, status="evaluated", origin="sampler", fail_reason=None):
    """One trial the way the search records it: ask, user attrs, budget constraint, tell."""
    trial = study.ask()
    number = trial.number
    trial.set_user_attr("candidate", {"prune": {"g0": 0.25 * (number % 3)}, "bits": {"fc": 8}})
    trial.set_user_attr("status", status)
    trial.set_user_attr("origin", origin)
    trial.set_user_attr("predicted_ms", latency)
    trial.set_user_attr("predicted_std_ms", 0.1)
    trial.set_user_attr("size_bytes", size)
    trial.set_user_attr("finetune_steps", 0 if status == "over_budget" else 20)
    trial.set_user_attr("seconds", 1.5)
    if status != "over_budget":
        trial.set_user_attr("accuracy", accuracy)
    trial.set_constraint("latency_over_budget_ms", latency - BUDGET_MS)
    if fail_reason is not None:
        trial.set_user_attr("fail_reason", fail_reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, [0.0 if status == "over_budget" else accuracy, latency, size])


@pytest.fixture(scope="module")
def records():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=DIRECTIONS)
    _add(study, 0.90, 4.0, 1000)  # 0 front
    _add(study, 0.85, 3.0, 1000, origin="warm_start:uniform-0.5-int8")  # 1 front
    _add(study, 0.80, 3.5, 1200)  # 2 dominated by 1
    _add(study, 0.95, 6.0, 2000, status="over_budget")  # 3 never fine-tuned
    _add(study, 0.70, 2.0, 500, status="stopped_early")  # 4 front, partial accuracy
    _add(study, 0.99, 1.0, 100, fail_reason="fine-tune diverged")  # 5 failed
    _add(study, 0.90, 4.0, 1000)  # 6 exact tie with 0: only 0 stays
    _add(study, 0.88, 4.5, 600, origin="boundary_repair")  # 7 front thanks to its size alone
    _add(study, 0.99, 5.5, 900)  # 8 scored but infeasible
    study.ask()  # 9 still running
    return records_from_study(study)


def test_records_carry_states_statuses_and_feasibility(records):
    assert [r.number for r in records] == list(range(10))
    assert [r.state for r in records] == ["complete"] * 5 + ["failed"] + ["complete"] * 3 + ["running"]
    assert [r.feasible for r in records] == [True, True, True, False, True, False, True, True, False, False]
    over, failed, running = records[3], records[5], records[9]
    assert over.status == "over_budget" and over.accuracy is None and over.latency_ms == 6.0
    assert failed.fail_reason == "fine-tune diverged" and failed.accuracy == 0.99 and failed.size_bytes == 100
    assert running.accuracy is None and running.candidate == {}
    assert records[1].origin == "warm_start:uniform-0.5-int8" and records[1].latency_std_ms == 0.1
    assert records[4].to_dict()["status"] == "stopped_early"


def test_front_excludes_dominated_infeasible_failed_and_ties(records):
    assert [r.number for r in pareto_front(records)] == [4, 1, 0, 7]


def test_best_under_budget(records):
    assert best_under(records, BUDGET_MS).number == 0
    assert best_under(records, 3.2).number == 1
    assert best_under(records, 1.0) is None
    assert best_under(records, None).number == 0


def test_best_under_breaks_accuracy_ties_by_latency():
    def rec(number, latency, size):
        return TrialRecord(number, "complete", "evaluated", "sampler", 0.9, latency, None, size, True)

    assert best_under([rec(0, 3.0, 2000), rec(1, 2.0, 3000)], 5.0).number == 1


def test_hypervolume_on_hand_computed_values(records):
    # Scored feasible points (latency, accuracy): (2, .70) (3, .85) (3.5, .80) (4, .90) (4.5, .88).
    # Slabs above the reference accuracy 0.5, up to 10 ms: 8*.20 + 7*.15 + 6*.05 = 2.95.
    assert hypervolume_2d(records, ref_latency_ms=10.0, ref_accuracy=0.5) == pytest.approx(2.95)
    assert hypervolume_2d(records, ref_latency_ms=3.0, ref_accuracy=0.5) == pytest.approx(0.2)
    assert hypervolume_2d(records, ref_latency_ms=10.0, ref_accuracy=0.95) == 0.0
    assert hypervolume_2d([], ref_latency_ms=10.0) == 0.0
    with pytest.raises(ValueError, match="ref_latency_ms"):
        hypervolume_2d(records, ref_latency_ms=float("inf"))


def test_seeds_are_fine_tuned_front_first_in_layers_and_those_over_the_budget_last():
    from autocompress.search.seeds import front_first

    # (latency, accuracy) under a 10 ms budget: 0 is slow and accurate, 1 fast and fair, 2 the
    # knee (the largest area alone: 5 x .9), 3 dominated by 2, 4 over the budget, 5 a copy of 2.
    latencies = [9.0, 1.0, 5.0, 6.0, 12.0, 5.0]
    accuracies = [0.95, 0.4, 0.9, 0.8, 0.99, 0.9]
    order = front_first(latencies, accuracies, budget_ms=10.0)
    # the knee, then what adds most beside it (the fast one: 4 x .4 below the knee, against the
    # slow one's 1 x .05); then the next layer: the knee's copy first (it ties, and came first), then 3
    assert order == [2, 1, 0, 5, 3, 4]
    assert front_first([1.0, 2.0], [0.0, 0.0], budget_ms=10.0) == [0, 1]  # nothing to gain: given order


def test_write_results_round_trips_the_front(records, tmp_path):
    paths = write_results(tmp_path / "out", records, budget_ms=BUDGET_MS, baseline=BASELINE)
    assert set(paths) == {"pareto.csv", "pareto.json", "trials.csv", "pareto.png", "pareto.html"}
    assert paths["pareto.png"].read_bytes().startswith(b"\x89PNG")
    page = paths["pareto.html"].read_text()
    assert "plotly" in page and "boundary_repair" in page and "trial 7" in page

    front = pareto_front(records)
    with paths["pareto.csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [4, 1, 0, 7]
    assert [float(r["accuracy"]) for r in rows] == [r.accuracy for r in front]
    assert [json.loads(r["candidate"]) for r in rows] == [r.candidate for r in front]
    assert float(rows[0]["size_ratio"]) == pytest.approx(500 / 4000)
    assert float(rows[0]["latency_ratio"]) == pytest.approx(2.0 / 10.0)

    document = json.loads(paths["pareto.json"].read_text())
    assert document["budget_ms"] == BUDGET_MS and document["baseline"] == BASELINE
    assert document["best_under_budget"] == 0 and document["n_trials"] == 10
    assert [p["latency_ms"] for p in document["points"]] == [2.0, 3.0, 4.0, 4.5]
    assert document["points"][0]["size_ratio"] == pytest.approx(500 / 4000)

    loaded = load_front(tmp_path / "out")
    assert loaded == document
    assert [TrialRecord.from_dict(p) for p in loaded["points"]] == front

    with paths["trials.csv"].open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 10
    assert trials[5]["state"] == "failed" and trials[5]["fail_reason"] == "fine-tune diverged"
    assert trials[3]["accuracy"] == "" and trials[3]["feasible"] == "False"


def test_summary_table_marks_best_under_budget(records):
    front = pareto_front(records)
    table = summary_table(front, budget_ms=4.2, baseline=BASELINE)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["trial", "acc"] and lines[1].split()[0] == "base"
    rows = {line.lstrip("* ").split()[0]: line for line in lines[2:6]}
    assert set(rows) == {"4", "1", "0", "7"}
    assert rows["0"].startswith("*") and rows["0"].split()[1:4] == ["0", "90.00", "4.000"]
    words = rows["7"].split()
    assert words[words.index("boundary_repair") - 1] == "no" and rows["4"].split()[6] == "yes"
    assert rows["7"].endswith(candidate_summary(front[[r.number for r in front].index(7)].candidate))
    assert rows["1"].split()[3:7] == ["0.30", "1.0", "0.25", "yes"]
    assert lines[-1] == "* best accuracy within the 4.2 ms budget: trial 0"
    assert "no trial" in summary_table([], budget_ms=BUDGET_MS, baseline=BASELINE)


def test_load_front_errors_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(AutocompressError, match=r"missing; run `autocompress search \.\.\. --out .*nowhere` first"):
        load_front(tmp_path / "nowhere")
    (tmp_path / "pareto.json").write_text("{not json")
    with pytest.raises(ResultsError, match="pareto.json is unreadable"):
        load_front(tmp_path)
    (tmp_path / "pareto.json").write_text(json.dumps({"budget_ms": 5.0, "baseline": BASELINE, "points": [{}]}))
    with pytest.raises(ResultsError, match="a TrialRecord needs"):
        load_front(tmp_path)


def test_write_results_into_a_file_path_is_a_user_error(records, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    with pytest.raises(ResultsError, match="cannot write results into .*taken"):
        write_results(blocker, records, budget_ms=BUDGET_MS, baseline=BASELINE)


def test_records_from_a_single_objective_study_is_refused():
    with pytest.raises(ResultsError, match="directions"):
        records_from_study(optuna.create_study())


def test_candidate_summary():
    candidate = {"prune": {"a": 0.5, "b": 0.25, "c": 0.0}, "bits": {"x": 8, "y": 8, "z": 4, "w": 32},
                 "rank": {"x": 0.5, "y": 1.0}, "skip": {"b1": True, "b2": False}, "kernel": {"k": 3}}
    assert candidate_summary(candidate) == (
        "2 groups pruned (mean 38%), 2 layers int8, 1 layer int4, 1 layer low-rank, 1 block skipped, kernels 1x3")
    assert candidate_summary({}) == "uncompressed"
