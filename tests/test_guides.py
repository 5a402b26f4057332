"""The guides' rules, each tested directly: the registry, screening, the seeds' order, and the
export's choice by measurement."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from reference_models import tiny_resnet

from autocompress.core.analysis import analyze
from autocompress.core.space import Space, SpaceOptions
from autocompress.errors import AutocompressError
from autocompress.export.confirm import SLACK, choose_by_measurement
from autocompress.hardware import load_hardware_model
from autocompress.hardware.store import find_hardware_model
from autocompress.search.allocation import expected_damage
from autocompress.search.budget import Budget, ChanceConstraint
from autocompress.search.damage import MAC_SHARE, MeasuredDamage
from autocompress.search.guides import GUIDES, make_guide
from autocompress.search.pareto import TrialRecord
from autocompress.search.screening import SCREENED_ORIGINS, Screening
from autocompress.search.seeds import front_first_seeds, hand_policy_seeds
from autocompress.search.surrogate import AccuracyModel


@pytest.fixture(scope="module")
def space() -> Space:
    analysis = analyze(tiny_resnet(), torch.randn(1, 3, 32, 32))
    return Space(analysis, SpaceOptions(prune_ratios=(0.0, 0.5, 0.875), bit_widths=(32, 8), rank_ratios=(1.0,),
                                        shrink_kernels=False))


@pytest.fixture(scope="module")
def damage(space) -> MeasuredDamage:
    """A damage per decision value that grows with how far it is from the unchanged model."""
    table = {v.name: {value: 0.0 if value == space.neutral(v) else 0.05 * (i + 1) * (k + 1)
                      for k, value in enumerate(c for c in v.choices if c != space.neutral(v))}
             for i, v in enumerate(space.variables)}
    for v in space.variables:
        table[v.name][space.neutral(v)] = 0.0
    return MeasuredDamage(lambda name, value: table[name][value])


@pytest.fixture(scope="module")
def accuracy_model(space, damage) -> AccuracyModel:
    rng, noise = random.Random(0), np.random.default_rng(0)
    candidates = [space.sample(rng, density=rng.uniform(0.05, 0.6)) for _ in range(60)]
    accuracies = [0.95 * math.exp(-expected_damage(space, c, damage)) + noise.normal(0, 0.003) for c in candidates]
    model = AccuracyModel(space, damage)
    assert model.fit(candidates, accuracies).held_out_spearman > 0.6 and model.ready
    return model


def _study_with_front(points: list[tuple[float, float, int]], *, infeasible: bool = False) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for accuracy, ms, size in points:
        study.add_trial(optuna.trial.create_trial(values=[accuracy, ms, size], user_attrs={"status": "evaluated"},
                                                  constraints={"latency": 1.0 if infeasible else -1.0}))
    return study


def test_every_guide_is_made_by_name_with_its_config_and_a_bad_option_names_guide_options():
    assert set(GUIDES) == {"macs", "sensitivity", "surrogate"}
    for name in GUIDES:
        guide = make_guide(name)
        assert guide.name == name and isinstance(guide.config_dict(), dict)
    assert make_guide("macs").damage() is MAC_SHARE and not make_guide("macs").needs_sensitivities
    assert make_guide("surrogate", {"optimism": 1.0}).config_dict()["optimism"] == 1.0
    with pytest.raises(AutocompressError, match="guide_options") as caught:
        make_guide("surrogate", {"optimism": -1.0})
    assert caught.value.parameters == ("guide_options",)
    with pytest.raises(AutocompressError, match="guide_options"):
        make_guide("macs", {"optimism": 1.0})  # the MAC-share guide has no tunables


def test_screening_tells_a_dominated_proposal_only_from_the_screened_origins_and_never_too_many_in_a_row(
        space, damage, accuracy_model):
    worst = max((space.sample(random.Random(i), density=0.6) for i in range(20)),
                key=lambda c: expected_damage(space, c, damage))
    front = [(0.95, 0.5, 10)]  # at least as fast and small as every proposal below, and more accurate
    screening = Screening(accuracy_model, _study_with_front(front), in_a_row=3)
    for origin in SCREENED_ORIGINS:
        assert "front point" in screening.reason(origin, worst, 1.0, 100)
    assert screening.screened == 3
    # a fourth in a row is fine-tuned regardless, and the count starts again
    assert screening.reason("sampler", worst, 1.0, 100) is None
    assert "front point" in screening.reason("sampler", worst, 1.0, 100)
    # hand policies, allocations and retries are what the model is judged against: never screened
    for origin in ("warm_start:uniform-0.5-fp32", "allocation:0.9x", "reallocation:0.9x", "retry"):
        assert screening.reason(origin, worst, 1.0, 100) is None
    # a proposal faster (or smaller) than every front point may extend the front
    assert screening.reason("sampler", worst, 0.4, 100) is None
    assert screening.reason("sampler", worst, 1.0, 5) is None
    # the unchanged model is expected to match the front point: fine-tuned
    assert screening.reason("sampler", space.default(), 1.0, 100) is None
    # infeasible trials (over the budget) are not the front a proposal must beat
    assert Screening(accuracy_model, _study_with_front(front, infeasible=True)).reason("sampler", worst, 1.0, 100) \
        is None
    # an unfit model screens nothing
    assert Screening(AccuracyModel(space, damage), _study_with_front(front)).reason("sampler", worst, 1.0, 100) is None


def test_seeds_start_with_what_the_front_gains_most_from_and_end_with_those_over_the_budget(space, damage):
    hardware = load_hardware_model(find_hardware_model())
    chance = ChanceConstraint(0.5)
    full_ms = hardware.predict_candidate(space.analysis, space.default()).ms
    budget_ms = 0.4 * full_ms  # the int8 policy and some uniform prunings are over it
    seeds = front_first_seeds(space, hardware, damage, budget_ms, chance)
    hand = hand_policy_seeds(space)
    origins = [s.origin for s in seeds]
    # every hand policy is among them, and allocations besides; nothing twice
    assert {s.origin for s in hand} <= set(origins) and any(o.startswith("allocation:") for o in origins)
    assert len(origins) == len(set(origins))
    latencies = [float(ms) for ms in chance.predict_upper_ms(hardware, space.analysis,
                                                             [space.from_params(s.params) for s in seeds])]
    over = [ms >= budget_ms for ms in latencies]
    assert any(over) and over == sorted(over), list(zip(origins, latencies))
    # the first seed adds the most area under the budget: none under the budget is both faster and
    # less damaged than it
    kept = [math.exp(-expected_damage(space, space.from_params(s.params), damage)) for s in seeds]
    assert not any(ms < latencies[0] and k > kept[0] for ms, k, o in zip(latencies, kept, over) if not o)
    # the MAC-share guide, the ablation of everything measured, keeps the hand order as written
    macs = make_guide("macs")
    macs.start(SimpleNamespace(space=space), optuna.create_study(), budget_ms, chance, predictor=hardware)
    assert [s.origin for s in macs.seeds()] == [s.origin for s in hand]


def test_the_export_picks_the_most_accurate_front_point_that_measures_under_the_budget(tiny_search_problem):
    problem = tiny_search_problem
    space = problem.space
    policies = {s.origin.split(":")[1]: space.from_params(s.params) for s in hand_policy_seeds(space)}
    chosen = [("unchanged", space.default(), 0.99), ("half", policies["uniform-0.5-fp32"], 0.95),
              ("deep", policies["uniform-0.75-fp32"], 0.90)]
    records = []
    for number, (_, candidate, accuracy) in enumerate(chosen):
        prediction = problem.hardware.predict_candidate(problem.analysis, candidate)
        records.append(TrialRecord(number, "complete", "evaluated", "test", accuracy, prediction.ms, None,
                                   1000 - 100 * number, True, candidate.to_dict()))
    half_ms = records[1].latency_ms
    budget = Budget.parse(f"{half_ms * 1.02:.6f}ms")
    choice = choose_by_measurement(problem, records, budget, sweeps=1, pause_s=0.0, passes=3, runs=10)
    timed = {t["trial"]: t for t in choice.timed}
    # predicted far over the budget: never timed
    assert 0 not in timed and records[0].latency_ms > budget.value * (1 + SLACK)
    # most accurate first: the half-pruned point is timed; the choice is the most accurate that fits
    assert 1 in timed
    fitting = [t for t in choice.timed if t["fits"]]
    assert all(t["fits"] == (t["measured_ms"] <= choice.limit_ms) for t in choice.timed)
    if fitting:
        assert choice.fits and choice.record.number == max(fitting, key=lambda t: t["accuracy"])["trial"]
    else:  # nothing measured under it: the one nearest the limit, flagged
        assert not choice.fits
    # nothing predicted near the budget: no choice at all
    assert choose_by_measurement(problem, records, Budget.parse(f"{records[2].latency_ms / 10:.6f}ms"),
                                 sweeps=1, pause_s=0.0) is None
