"""Misses measured near the budget correct the predictions of their neighbours, and survive a resume."""

from __future__ import annotations

import csv
import math

import optuna
import pytest
import torch
from reference_models import tiny_resnet
from test_budget_confidence import FixedPrice, Instant

from autocompress.core.analysis import analyze
from autocompress.core.space import Space
from autocompress.search.budget import ChanceConstraint
from autocompress.search.driver import TrialDriver
from autocompress.search.latency_pipeline import LatencyPipeline
from autocompress.search.local_correction import BANDWIDTH, ROWS_FILE, LocalCorrection
from autocompress.search.problem import ProblemSpec
from autocompress.search.run import LatencySettings, SearchSettings


@pytest.fixture(scope="module")
def space():
    return Space(analyze(tiny_resnet(), torch.randn(1, 3, 32, 32)))


def _changed(space, candidate, count):
    """``candidate`` with its first ``count`` variables moved off their value."""
    for var in space.variables[:count]:
        value = candidate.of(var.kind).get(var.unit, space.neutral(var))
        candidate = candidate.with_decision(var.kind, var.unit, next(c for c in var.choices if c != value))
    return candidate


def test_the_correction_follows_the_nearest_rows_and_is_shrunk_toward_one(space, tmp_path):
    base = space.default()
    correction = LocalCorrection(space)
    assert correction.factor(base) == 1.0 and correction.correct(base, 2.0, 0.2) == (2.0, 0.2)
    correction.add(3, base, 1.0, 1.0, 1.2, tmp_path)  # measured 20% over its prediction
    assert correction.factor(base) == pytest.approx(1.2)  # the candidate itself was measured: read there
    assert correction.correct(base, 2.0, 0.2) == pytest.approx((2.4, 0.24))
    one_off = _changed(space, base, 1)  # a neighbour: shrunk toward 1 (about half way for one close row)
    weight = math.exp(-1 / len(space.variables) / BANDWIDTH)
    assert correction.factor(one_off) == pytest.approx(1.2 ** (weight / (weight + 1)))
    assert 1.0 < correction.factor(_changed(space, base, len(space.variables))) < 1.0001  # nothing in common
    for trial in (4, 5):
        correction.add(trial, base, 1.0, 1.1, 1.2, tmp_path)
    assert correction.factor(base) == pytest.approx(1.2)  # three measurements of it, all 1.2
    assert correction.factor(one_off) == pytest.approx(1.2 ** (3 * weight / (3 * weight + 1)))
    resumed = LocalCorrection.load(space, tmp_path)
    assert [r.trial for r in resumed.rows] == [3, 4, 5]
    assert resumed.factor(one_off) == pytest.approx(correction.factor(one_off))
    assert resumed.summary() == {"measurements": 3, "file": str(ROWS_FILE),
                                 "median_miss_before": pytest.approx(1 - 1.0 / 1.2),
                                 "median_miss_after": pytest.approx(1 - 1.1 / 1.2)}


def test_a_miss_measured_near_the_budget_moves_the_next_prediction_over_it(space, tmp_path):
    settings = SearchSettings(problem=ProblemSpec(model="reference_models:tiny_resnet"), budget="1.05ms",
                              out=tmp_path, trials=2, repair=False, guide="macs",
                              latency=LatencySettings.predicted_only(0.5))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for _ in range(2):
        study.enqueue_trial(space.params_of(space.default()))
    executor = Instant()
    latency = LatencyPipeline(FixedPrice(space), LocalCorrection.load(space, tmp_path), 1.05, ChanceConstraint(0.5),
                              tmp_path, MeasuresFirst(1.3))
    TrialDriver(settings, FixedPrice(space), study, 1.05, executor, latency=latency).run(progress=False)  # 1.0 +- 0.1
    first, second = study.trials[:2]  # the queued two; over the budget, they leave the one trial asked to draw
    assert first.user_attrs["measured_ms"] == 1.3 and first.user_attrs["status"] == "over_budget"
    # not timed: its prediction, corrected by the one measured neighbour, is over the budget
    assert "measured_ms" not in second.user_attrs and second.user_attrs["status"] == "over_budget"
    assert second.user_attrs["uncorrected_ms"] == 1.0
    assert second.values[1] == second.user_attrs["predicted_ms"] == pytest.approx(1.3)  # itself, measured
    assert second.user_attrs["predicted_std_ms"] == pytest.approx(0.13)
    assert not [job for job in executor.jobs if job.number in (first.number, second.number)]
    with open(tmp_path / ROWS_FILE, newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert (int(row["trial"]), float(row["predicted_ms"]), float(row["corrected_ms"]), float(row["measured_ms"])) == \
        (first.number, 1.0, 1.0, 1.3)
    assert TrialDriver(settings, FixedPrice(space), study, 1.05, executor).latency.correction.factor(
        space.default()) == pytest.approx(1.3)  # a resumed search corrects as this one did


class MeasuresFirst:
    """Times the first candidate it is asked about, at ``ms``, and no other."""

    def __init__(self, ms):
        self.ms, self.asked = ms, 0

    def wants(self, predicted_ms, upper_ms):
        self.asked += 1
        return self.asked == 1

    def measure(self, candidate):
        return self.ms
