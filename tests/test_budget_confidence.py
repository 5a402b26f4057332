"""The budget as a chance constraint: a predicted candidate meets it with a probability, a measured one by its
measurement."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from reference_models import tiny_resnet

from autocompress.cli.main import main
from autocompress.core.accounting import footprint_of_candidate
from autocompress.core.analysis import analyze
from autocompress.core.space import Space, SpaceOptions
from autocompress.errors import BudgetError
from autocompress.hardware import LatencyPrediction
from autocompress.search.allocation import allocate
from autocompress.search.boundary import fastest_candidate, repair_to_budget
from autocompress.search.budget import MEASURED_MARGIN, Budget, ChanceConstraint
from autocompress.search.driver import _PROPOSALS_PER_TRIAL, TrialDriver
from autocompress.search.latency_pipeline import LatencyPipeline
from autocompress.search.local_correction import LocalCorrection
from autocompress.search.executors import TrialResult
from autocompress.search.pareto import records_from_study
from autocompress.search.preflight import check_reachable
from autocompress.search.problem import ProblemSpec
from autocompress.search.run import LatencySettings, SearchSettings

Z90 = 1.2815515655446004  # the normal quantile of 0.9


def test_a_prediction_meets_the_budget_with_the_confidence_asked_and_a_measurement_by_itself():
    assert ChanceConstraint(0.9).z == pytest.approx(Z90)
    assert ChanceConstraint(0.5).z == 0.0
    # mean 1.0 ms under a 1.05 ms budget, but 1 + 1.28 * 0.1 over it
    assert ChanceConstraint(0.9).upper_ms(1.0, 0.1) == pytest.approx(1.0 + 0.1 * Z90)
    assert ChanceConstraint(0.9).over_budget_ms(1.0, 0.1, 1.05) == pytest.approx(1.0 + 0.1 * Z90 - 1.05)
    assert ChanceConstraint(0.5).over_budget_ms(1.0, 0.1, 1.05) == pytest.approx(-0.05)
    # measured: by itself, with the margin the export demands (a re-measurement's noise)
    assert ChanceConstraint(0.9).over_budget_ms(1.0, 0.1, 1.05, measured=True) == \
        pytest.approx(1.0 - 1.05 * (1 - MEASURED_MARGIN))
    assert ChanceConstraint(0.5).over_budget_ms(1.02, 0.0, 1.05, measured=True) > 0  # under it, not by the margin
    np.testing.assert_allclose(ChanceConstraint(0.8).upper_ms(np.array([1.0, 2.0]), np.array([0.0, 0.5])),
                               [1.0, 2.0 + 0.5 * 0.8416212335729143])


@pytest.mark.parametrize("confidence", [0.4, 1.0, 1.5])
def test_a_confidence_outside_a_half_to_one_is_refused_in_one_line(confidence, tmp_path, capsys):
    with pytest.raises(BudgetError, match=r"^budget_confidence .*: give a probability from 0.5"):
        ChanceConstraint(confidence)
    assert main(["search", "resnet18", "--budget", "0.5x", "--budget-confidence", str(confidence),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autocompress: error: --budget-confidence {confidence}: give a probability") and "\n" not in err
    assert not (tmp_path / "run").exists()


class MacsWithSpread:
    """A latency model proportional to the MACs kept, whose uncertainty is a tenth of its mean."""

    def predict_candidates(self, analysis, candidates):
        ms = np.array([footprint_of_candidate(analysis, c).macs / 1e6 for c in candidates])
        return ms, 0.1 * ms

    def predict_candidate(self, analysis, candidate):
        (ms,), (std,) = self.predict_candidates(analysis, [candidate])
        return LatencyPrediction(float(ms), float(std), {})


@pytest.fixture(scope="module")
def priced():
    # pruning in steps of one channel, no skips: MACs fall a little with each move
    options = SpaceOptions(skip_blocks=False, shrink_kernels=False, channel_multiple=1)
    space = Space(analyze(tiny_resnet(), torch.randn(1, 3, 32, 32)), options)
    hardware = MacsWithSpread()
    return space, hardware, float(hardware.predict_candidates(space.analysis, [space.default()])[0][0])


def test_repair_allocation_and_the_reachability_check_read_latency_at_the_confidence(priced):
    space, hardware, full = priced
    budget = 0.6 * full
    sure, on_mean = ChanceConstraint(0.9), ChanceConstraint(0.5)
    repaired, upper = repair_to_budget(space, hardware, space.default(), budget, chance=sure)
    (mean,), _ = hardware.predict_candidates(space.analysis, [repaired])
    assert upper == pytest.approx(mean * (1 + 0.1 * Z90)) and upper <= budget
    plain, plain_ms = repair_to_budget(space, hardware, space.default(), budget, chance=on_mean)
    assert plain_ms <= budget < sure.upper_ms(plain_ms, 0.1 * plain_ms)  # on the mean: not sure to fit
    for seed in allocate(space, hardware, lambda name, value: 0.0 if value == _neutral(space, name) else 1.0,
                         budget, shares=(1.0, 0.7), chance=sure):
        (ms,), _ = hardware.predict_candidates(space.analysis, [seed.candidate])
        assert seed.predicted_ms == pytest.approx(ms * (1 + 0.1 * Z90)) and seed.predicted_ms <= seed.target_ms
    _, fastest_mean = fastest_candidate(space, hardware)
    reachable_on_the_mean = Budget(fastest_mean * 1.01, "ms")
    check_reachable(space, hardware, reachable_on_the_mean, chance=on_mean)
    with pytest.raises(BudgetError, match=r"at 90% confidence .*or give a lower budget_confidence$"):
        check_reachable(space, hardware, reachable_on_the_mean, chance=sure)


def _neutral(space, name):
    return next(space.neutral(v) for v in space.variables if v.name == name)


class FixedPrice:
    """The search problem as the driver sees it, every candidate predicted at 1.0 +- 0.1 ms."""

    def __init__(self, space):
        self.space, self.sensitivities, self.hardware = space, None, None

    def predict(self, candidate):
        return LatencyPrediction(1.0, 0.1, {})

    def size_bytes(self, candidate):
        return 1000


class Instant:
    """An executor whose fine-tunes finish at once at 90% accuracy."""

    slots = 1

    def __init__(self):
        self.jobs = []

    def submit(self, job):
        self.jobs.append(job)
        return len(self.jobs)

    def wait(self, handles):
        return [(h, TrialResult(0.9, 1, False, None, 0.0, {})) for h in handles]

    def worker_of(self, handle):
        return None


class MeasuresAt:
    def __init__(self, ms):
        self.ms = ms

    def wants(self, predicted_ms, upper_ms):
        return True

    def measure(self, candidate):
        return self.ms


@pytest.mark.parametrize("confidence, measured_ms, fits", [(0.9, None, False), (0.5, None, True), (0.9, 0.99, True),
                                                           (0.5, 1.01, False)])
def test_the_driver_tells_a_trial_over_budget_by_the_chance_constraint_or_by_its_measurement(
        priced, tmp_path, confidence, measured_ms, fits):
    space, _, _ = priced
    settings = SearchSettings(problem=ProblemSpec(model="reference_models:tiny_resnet"), budget="1.05ms",
                              out=tmp_path, trials=1, repair=False, guide="macs",
                              latency=LatencySettings.predicted_only(confidence))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    executor = Instant()
    timer = MeasuresAt(measured_ms) if measured_ms is not None else None
    latency = LatencyPipeline(FixedPrice(space), LocalCorrection(space), 1.05, ChanceConstraint(confidence), tmp_path,
                              timer)
    TrialDriver(settings, FixedPrice(space), study, 1.05, executor, latency=latency).run(progress=False)
    trial = study.trials[0]
    # a proposal told over the budget does not count as a trial: the driver draws on, up to its cap
    assert len(study.trials) == (1 if fits else _PROPOSALS_PER_TRIAL * settings.trials)
    latency = 1.0 if measured_ms is None else measured_ms
    over = (latency + 0.1 * ChanceConstraint(confidence).z - 1.05 if measured_ms is None
            else latency - 1.05 * (1 - MEASURED_MARGIN))
    assert trial.constraints["latency_over_budget_ms"] == pytest.approx(over)
    assert trial.user_attrs["status"] == ("evaluated" if fits else "over_budget")
    assert trial.values == pytest.approx([0.9 if fits else 0.0, latency, 1000])
    assert len(executor.jobs) == int(fits)  # an unsure candidate is never fine-tuned
    assert records_from_study(study)[0].feasible == fits
