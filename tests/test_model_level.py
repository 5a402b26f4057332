"""A search that times its own model's candidates first and predicts at their level."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
import statistics

import pytest

from autocompress.core.candidate import Candidate
from autocompress.hardware.model_level import OWN_CANDIDATES, own_candidates, profiled_on
from autocompress.hardware.store import find_hardware_model, load_hardware_model
from autocompress.search.budget import MEASURED_MARGIN
from autocompress.search.folder import SearchFolder
from autocompress.search.problem import ProblemSpec
from autocompress.search.run import LatencySettings, SearchSettings, _wants_model_level, run_search
from autocompress.train.finetune import DistillationConfig


def test_own_candidates_start_uncompressed_then_the_policies_and_never_repeat():
    from autocompress.hardware.candidates import model_under_test
    from autocompress.core.space import Space, SpaceOptions

    target = model_under_test("reference_models:tiny_resnet", 32)
    space = Space(target.analysis, SpaceOptions())
    named = own_candidates(space)
    assert len(named) == OWN_CANDIDATES and named[0] == ("uncompressed", space.default())
    assert any(name.startswith("uniform") for name, _ in named)
    assert len({c.to_json() for _, c in named}) == len(named)
    assert own_candidates(space) == named  # seeded: a resumed run would time the same ones


def test_auto_calibrates_only_models_the_hardware_model_was_not_profiled_on(shipped_hardware):
    hardware = shipped_hardware
    assert profiled_on(hardware, "resnet18") and profiled_on(hardware, "torchvision:mobilenet_v2")
    assert not profiled_on(hardware, "reference_models:tiny_resnet")


@pytest.mark.parametrize("model, budget, wanted", [("resnet18", "0.5x", True), ("resnet18", "2ms", False),
                                                   ("reference_models:tiny_resnet", "2ms", True)])
def test_auto_times_own_candidates_under_a_relative_budget_or_on_an_unprofiled_model(tmp_path, model, budget, wanted,
                                                                                    shipped_hardware):
    # a relative budget is a share of the original measured here, whatever the hardware model knows
    hardware = shipped_hardware
    settings = SearchSettings(problem=ProblemSpec(model=model), budget=budget, out=tmp_path,
                              latency=LatencySettings(calibrate_model="auto"))
    assert _wants_model_level(settings, hardware) is wanted
    assert _wants_model_level(SearchSettings(problem=ProblemSpec(model=model), budget=budget, out=tmp_path,
                                             latency=LatencySettings(calibrate_model="off")), hardware) is False


def test_a_search_times_its_own_candidates_once_and_a_relative_budget_is_a_share_of_the_measured_original(tmp_path):
    spec = ProblemSpec(model="reference_models:tiny_resnet", train_steps=40)
    # a wide margin, so that some trials are timed before their fine-tune too
    settings = SearchSettings(problem=spec, budget="0.6x", out=tmp_path, trials=4,
                              finetune=DistillationConfig(steps=2), guide="macs",
                              latency=LatencySettings(calibrate_model="auto", measure_near_budget=0.6))
    outcome = run_search(settings, progress=False)
    table = tmp_path / "latency" / "own_candidates.csv"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == OWN_CANDIDATES and rows[0]["name"] == "uncompressed"
    assert all(float(r["measured_ms"]) > 0 and float(r["predicted_ms"]) > 0 for r in rows)
    recorded = json.loads((tmp_path / "search.json").read_text())
    level = recorded["host_level"]
    ratio = statistics.median(float(r["measured_ms"]) / float(r["predicted_ms"]) for r in rows)
    assert level["ratio"] == pytest.approx(ratio) and "own candidates" in recorded["level_from"]
    assert level["baseline_ms"] == pytest.approx(float(rows[0]["measured_ms"]))
    assert outcome.budget_ms == pytest.approx(0.6 * level["baseline_ms"])
    assert recorded["baseline"]["latency_ms"] == pytest.approx(level["baseline_ms"])
    assert level["rms_error_after"] >= 0 and level["rms_error_before"] >= 0
    # the trials were predicted at that level, and a warm start, timed among the own candidates, is
    # read at its own measurement (the correction's rows with no trial)
    predicted = {Candidate.from_json(r["candidate"]).to_json(): float(r["predicted_ms"]) for r in rows}
    measured_own = {Candidate.from_json(r["candidate"]).to_json(): float(r["measured_ms"]) for r in rows}
    own = [r for r in outcome.records if r.latency_ms is not None
           and Candidate.from_dict(r.candidate).to_json() in predicted]
    assert own
    study = SearchFolder(tmp_path).load_study()
    for record in own:
        key, attrs = Candidate.from_dict(record.candidate).to_json(), study.trials[record.number].user_attrs
        assert attrs.get("uncorrected_ms", attrs["predicted_ms"]) == pytest.approx(ratio * predicted[key])
        assert attrs["predicted_ms"] == pytest.approx(measured_own[key])
    # near the budget, the study holds the measurement: the objective, the constraint and the table say so
    measured = [t for t in study.trials if "measured_ms" in t.user_attrs and t.values is not None]
    assert measured, "no trial was timed near the budget"
    for trial in measured:
        assert trial.values[1] == trial.user_attrs["measured_ms"]
        # a measurement fits with the margin the export demands of its own
        limit = outcome.budget_ms * (1 - MEASURED_MARGIN)
        assert trial.constraints["latency_over_budget_ms"] == pytest.approx(trial.values[1] - limit)
        assert (trial.user_attrs["status"] == "over_budget") == (trial.values[1] > limit)
    with open(tmp_path / "trials.csv", newline="") as handle:
        flags = {int(r["number"]): r["latency_measured"] for r in csv.DictReader(handle)}
    assert {flags[t.number] for t in measured} == {"True"}
    with open(tmp_path / "latency" / "near_budget.csv", newline="") as handle:
        trials = sorted(int(r["trial"]) for r in csv.DictReader(handle))
    # the own candidates first, as measured rows of no trial; then the trials timed near the budget
    assert trials == list(range(-OWN_CANDIDATES, 0)) + sorted(t.number for t in measured)
    assert recorded_near_budget(tmp_path)["measurements"] == len(measured)
    modified = table.stat().st_mtime_ns
    run_search(replace(settings, trials=5), progress=False)  # resumed: not timed again
    assert table.stat().st_mtime_ns == modified
    assert json.loads((tmp_path / "search.json").read_text())["host_level"]["ratio"] == pytest.approx(ratio)


def recorded_near_budget(folder):
    return json.loads((folder / "search.json").read_text())["near_budget"]


def test_the_baseline_a_relative_budget_is_a_share_of_is_its_fastest_timing_among_several_in_every_sweep(
        tmp_path, monkeypatch):
    """One slow batch must not set the whole search's budget: the uncompressed model is timed
    BASELINE_REPEATS more times in every sweep, and the level's baseline is its fastest timing."""
    from autocompress.hardware import model_level
    from autocompress.hardware.candidates import model_under_test
    from autocompress.hardware.measure import LatencyMeasurement
    from autocompress.core.space import Space, SpaceOptions

    target = model_under_test("reference_models:tiny_resnet", 32)
    space = Space(target.analysis, SpaceOptions())
    uncompressed = space.default()
    seen = []

    def scripted(items, *, sweeps, orders, **_):
        # every candidate 0.5 ms; the uncompressed model slow (2 ms) except in one timing of one repeat
        assert all(sorted(order) == list(range(len(items))) for order in orders)
        seen.extend(candidate for _, candidate in items)
        timings = [[LatencyMeasurement(0.5, 0.5, 0.0, 1, 1, "cpu", best_ms=0.5)] * sweeps for _ in items]
        for i, (_, candidate) in enumerate(items):
            if candidate == uncompressed:
                timings[i] = [LatencyMeasurement(2.0, 2.0, 0.0, 1, 1, "cpu", best_ms=2.0)] * sweeps
        timings[-1] = [timings[-1][0], LatencyMeasurement(1.1, 1.1, 0.0, 1, 1, "cpu", best_ms=1.1)]
        return timings

    monkeypatch.setattr(model_level, "measure_in_batches_and_sweeps", scripted)
    hardware = load_hardware_model(find_hardware_model())
    level = model_level.measure_model_level(hardware, target, space, tmp_path, count=8, sweeps=2)
    assert sum(c == uncompressed for c in seen) == 1 + model_level.BASELINE_REPEATS
    assert level.baseline_ms == 1.1
    with open(tmp_path / "own_candidates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and rows[0]["name"] == "uncompressed" and float(rows[0]["measured_ms"]) == 1.1
    assert all(float(r["measured_ms"]) == 0.5 for r in rows[1:])


def test_every_candidate_is_timed_where_the_own_candidates_say_the_predictor_is_unreliable_for_the_model():
    from autocompress.hardware.host_level import HostLevel
    from autocompress.search.near_budget import NearBudgetTimer, times_every_candidate

    def level(ratios):
        return HostLevel.from_references([{"predicted_ms": 1.0, "measured_ms": r} for r in ratios])

    even, uneven = level([0.70, 0.72, 0.69, 0.71, 0.70]), level([0.3, 0.7, 1.4, 0.6, 2.0])
    assert even.residual_error < 0.05 < 0.5 < uneven.residual_error
    assert not times_every_candidate(even) and times_every_candidate(uneven) and not times_every_candidate(None)

    class Problem:  # what the timer reads of a SearchProblem
        baseline = analysis = example = None
        hardware = load_hardware_model(find_hardware_model())

    near = NearBudgetTimer(Problem(), "m", 32, 1.0, 0.1)
    every = NearBudgetTimer(Problem(), "m", 32, 1.0, 0.1, everything=True)
    assert not near.wants(0.5) and every.wants(0.5)  # far under the budget
    assert near.wants(0.95) and every.wants(0.95)
    assert not near.wants(1.2) and not every.wants(1.2)  # over the margin: told at once, never timed
