"""Measured sensitivities: each decision value alone on the trained model, cached, and what repair ranks by."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from autocompress.core.accounting import footprint_of_candidate
from autocompress.core.analysis import analyze
from autocompress.core.space import Space, SpaceOptions
from autocompress.core.policies import warm_start_policies
from autocompress.search.allocation import allocate, expected_damage
from autocompress.search.boundary import repair_to_budget
from autocompress.search.damage import MeasuredDamage
from autocompress.search.screening import SCREENED_ORIGINS
from autocompress.search.surrogate import MIN_TRIALS, AccuracyModel
from autocompress.train.data import load_dataset
from autocompress.train.sensitivity import REFERENCE, JointDamage, SensitivityConfig, measure_sensitivities
from autocompress.train.training import train_classifier
from autocompress.zoo import small_resnet

CONFIG = SensitivityConfig(samples=64, recalibration_batches=2)


@pytest.fixture(scope="module")
def trained():
    splits = load_dataset("digits", image_size=16)
    torch.manual_seed(0)
    model = small_resnet(widths=(16, 32))
    train_classifier(model, splits.train, steps=60)
    model.eval()
    example = splits.val[0][0].unsqueeze(0)
    space = Space(analyze(model, example), SpaceOptions(prune_ratios=(0.0, 0.5, 0.875), bit_widths=(32, 8),
                                                      rank_ratios=(1.0,), shrink_kernels=False))
    images = torch.stack([splits.train[i][0] for i in range(CONFIG.samples)])
    return model, space, example, images, splits


class MacsOnly:
    """A latency model proportional to the MACs kept, so that every ranking faces the same prices."""

    quantization_rules = None

    def predict_candidates(self, analysis, candidates):
        return np.array([footprint_of_candidate(analysis, c).macs / 1e6 for c in candidates]), None


def _rows(folder):
    with open(folder / "sensitivity.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_decision_value_is_measured_once_and_deeper_cuts_hurt_more(trained, tmp_path):
    model, space, example, images, splits = trained
    table = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG,
                                  progress=False)
    expected = {(v.name, str(c)) for v in space.variables for c in v.choices if c != space.neutral(v)}
    rows = _rows(tmp_path)
    assert {(r["variable"], r["value"]) for r in rows} == expected | {(REFERENCE, "")}
    assert len(table) == len(expected)
    # the uncompressed model, only recalibrated, is close to itself: the floor is small
    assert 0.0 <= table.floor < 0.05
    prunes = [v.name for v in space.variables if v.kind == "prune"]
    assert prunes
    deeper_hurts_more = [table.kl(p, 0.875) >= table.kl(p, 0.5) for p in prunes]
    assert sum(deeper_hurts_more) >= len(prunes) - 1  # one notch more pruning damages more, nearly always
    bits = [v.name for v in space.variables if v.kind == "bits"]
    assert max(table.kl(b, 8) for b in bits) < max(table.kl(p, 0.875) for p in prunes)  # int8 is mild
    assert table.kl(prunes[0], 0.0) == 0.0  # the neutral value costs nothing
    for row in rows:
        assert 0.0 <= float(row["agreement"]) <= 1.0 and float(row["kl"]) >= 0.0


def test_a_second_run_reads_the_table_and_a_lost_row_is_measured_again(trained, tmp_path):
    model, space, example, images, splits = trained
    first = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG, progress=False)
    rows = _rows(tmp_path)
    with open(tmp_path / "sensitivity.csv", "w", newline="") as handle:  # as if killed before the last job
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    second = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG,
                                   progress=False)
    again = {(r["variable"], r["value"]): r["seconds"] for r in _rows(tmp_path)}
    assert sum(again[r["variable"], r["value"]] != r["seconds"] for r in rows[:-1]) == 0  # nothing redone
    assert first.rows.keys() == second.rows.keys()
    last = rows[-1]
    assert second.kl(last["variable"], last["value"]) == pytest.approx(
        first.kl(last["variable"], last["value"]), rel=1e-6, abs=1e-9)  # measured again, the same


def _measured_and_priced(trained, folder):
    """The trained model's space, its measured damage table, a MAC-counting latency model and the
    uncompressed model's latency by it."""
    model, space, example, images, splits = trained
    table = measure_sensitivities(model, space, example, images, splits.train, folder, config=CONFIG,
                                  progress=False)
    hardware = MacsOnly()
    return space, table, hardware, hardware.predict_candidates(space.analysis, [space.default()])[0][0]


def test_repair_ranked_by_measured_damage_avoids_the_decision_that_hurts_most(trained, tmp_path):
    space, table, hardware, full = _measured_and_priced(trained, tmp_path)
    budget = 0.7 * full
    measured, _ = repair_to_budget(space, hardware, space.default(), budget, damage=MeasuredDamage(table.kl))
    proxy, _ = repair_to_budget(space, hardware, space.default(), budget)
    assert hardware.predict_candidates(space.analysis, [measured])[0][0] <= budget

    assert expected_damage(space, measured, table.kl) <= expected_damage(space, proxy, table.kl)


def test_allocations_fit_their_rungs_give_back_what_they_need_not_and_beat_uniform_pruning(trained, tmp_path):
    space, table, hardware, full = _measured_and_priced(trained, tmp_path)
    seeds = allocate(space, hardware, table.kl, 0.8 * full)
    assert len(seeds) >= 4 and [s.share for s in seeds] == sorted((s.share for s in seeds), reverse=True)
    for seed in seeds:
        ms = hardware.predict_candidates(space.analysis, [seed.candidate])[0][0]
        assert ms == pytest.approx(seed.predicted_ms) and ms <= seed.target_ms + 1e-9
        assert seed.damage == pytest.approx(expected_damage(space, seed.candidate, table.kl))
        # given back: no compressed decision can be softened any more within the rung
        for var in space.variables:
            value = seed.candidate.of(var.kind).get(var.unit, space.neutral(var))
            for other in var.choices:
                if table.kl(var.name, other) < table.kl(var.name, value):
                    softer = seed.candidate.with_decision(var.kind, var.unit, other)
                    assert hardware.predict_candidates(space.analysis, [softer])[0][0] > seed.target_ms
    assert seeds[0].damage <= seeds[-1].damage
    # a budget the uncompressed model meets: the rungs stand below the model, not all at it
    loose = allocate(space, hardware, table.kl, 3 * full)
    assert len(loose) >= 4 and all(s.target_ms == pytest.approx(s.share * full) for s in loose)
    # at the latency of each uniform pruning policy, the allocation does less measured damage
    for name, params in warm_start_policies(space).items():
        if name.startswith("uniform") and name.endswith("fp32"):
            uniform = space.from_params(params)
            ms = hardware.predict_candidates(space.analysis, [uniform])[0][0]
            (seed,) = allocate(space, hardware, table.kl, ms, shares=(1.0,))
            assert seed.damage <= expected_damage(space, uniform, table.kl), name


def test_the_accuracy_model_ranks_held_out_candidates_and_screens_only_what_the_front_beats(trained, tmp_path):
    model, space, example, images, splits = trained
    table = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG,
                                  progress=False)
    import random

    rng, noise = random.Random(0), np.random.default_rng(0)
    candidates = [space.sample(rng, density=rng.uniform(0.05, 0.5)) for _ in range(60)]
    # an accuracy that falls with the measured damage, with the noise of a short fine-tune
    accuracy = [0.99 * np.exp(-0.5 * expected_damage(space, c, table.kl)) + noise.normal(0, 0.005)
                for c in candidates]
    few = AccuracyModel(space, table.kl)
    assert few.fit(candidates[: MIN_TRIALS - 1], accuracy[: MIN_TRIALS - 1]).held_out_spearman is None
    assert not few.ready and few.screen(candidates[0], 1.0, 1, [(1.0, 0.0, 0)]) is None  # unfit: screens nothing
    learned = AccuracyModel(space, table.kl)
    report = learned.fit(candidates, accuracy)
    assert report.trials == 60 and report.held_out_spearman > 0.6 and learned.ready, report
    assert report.prior_spearman > 0.6  # the damage alone ranks them too: it is what they were drawn from
    worst = max(candidates, key=lambda c: expected_damage(space, c, table.kl))
    mean, std = learned.expect([worst, space.default()])
    assert mean[0] < mean[1] and (std >= 0).all()
    front = [(0.99, 0.5, 10)]  # a point at least as fast and as small as the proposals below
    assert "front point" in learned.screen(worst, 1.0, 100, front)
    assert learned.screen(worst, 0.4, 100, front) is None  # faster than the front point: worth a fine-tune
    assert learned.screen(space.default(), 1.0, 100, front) is None  # may well match it


def test_a_whole_candidates_damage_is_measured_as_one_decisions_and_the_accuracy_model_learns_from_it(trained,
                                                                                                        tmp_path):
    model, space, example, images, splits = trained
    table = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG,
                                  progress=False)
    joint = JointDamage(model, space, example, images, splits.train, config=CONFIG)
    var = next(v for v in space.variables if v.kind == "prune")
    alone = space.default().with_decision(var.kind, var.unit, 0.875)
    assert joint(alone) == pytest.approx(table.kl(var.name, 0.875), rel=1e-6, abs=1e-9)  # the table's measurement
    assert joint(space.default()) == pytest.approx(table.kl(REFERENCE, None), abs=1e-9)
    import random

    rng, noise = random.Random(1), np.random.default_rng(1)
    candidates = [space.sample(rng, density=rng.uniform(0.05, 0.6)) for _ in range(40)]
    # damages compound: an accuracy that follows the whole candidate's damage, not the sum of its parts
    accuracy = [0.99 * np.exp(-0.5 * joint(c)) + noise.normal(0, 0.005) for c in candidates]
    with_joint, additive = AccuracyModel(space, table.kl, joint), AccuracyModel(space, table.kl)
    report, plain = with_joint.fit(candidates, accuracy), additive.fit(candidates, accuracy)
    assert report.joint_spearman > 0.9 and plain.joint_spearman is None
    assert report.held_out_spearman > plain.held_out_spearman, (report, plain)
    assert report.joint_spearman > report.prior_spearman


def test_a_surrogate_guided_search_measures_once_seeds_allocations_and_records_its_accuracy_model(tmp_path, capsys):
    # one search covers the sensitivity guide too: the surrogate guide repairs by the same measured table
    import optuna

    from autocompress.cli import main
    from autocompress.search.folder import SearchFolder
    from autocompress.search.problem import ProblemSpec
    from autocompress.search.run import LatencySettings, SearchSettings, run_search
    from autocompress.train.finetune import DistillationConfig

    spec = ProblemSpec(model="reference_models:tiny_resnet", train_steps=40)
    # on the predicted mean: enough trials fit the budget for the accuracy model to be fit. The
    # guide's trust thresholds are lowered so that screening and the reallocations happen within
    # 24 trials of a tiny model (the rules themselves, at their defaults, are tested in test_guides)
    settings = SearchSettings(problem=spec, budget="0.6x", out=tmp_path, trials=24,
                              finetune=DistillationConfig(steps=4), guide="surrogate",
                              guide_options={"min_rank_correlation": -1.0, "optimism": 0.0, "min_recovery_gain": -2.0},
                              latency=LatencySettings.predicted_only(0.5))
    outcome = run_search(settings, progress=False)
    assert json.loads((tmp_path / "search.json").read_text())["settings"]["search"]["guide"] == "surrogate"
    rows = _rows(tmp_path / "sensitivity")
    assert rows[0]["variable"] == REFERENCE and len(rows) > 10
    assert (tmp_path / "sensitivity" / "sensitivity.png").stat().st_size > 1000
    study = SearchFolder(tmp_path).load_study()
    seeded = [t for t in study.trials if t.user_attrs.get("origin", "").startswith("allocation:")]
    assert seeded, "no allocation seeded the study"
    for trial in seeded:
        share = float(trial.user_attrs["origin"].split(":")[1].rstrip("x"))
        assert trial.user_attrs["predicted_ms"] <= share * outcome.budget_ms + 1e-9
        assert trial.user_attrs["status"] == "evaluated"
    # front first: the seeds predicted within the budget are fine-tuned before those told over it
    seeds = [t for t in study.trials if t.user_attrs.get("origin", "").startswith(("warm_start:", "allocation:"))]
    over = [t.user_attrs["predicted_ms"] >= outcome.budget_ms for t in seeds]
    assert any(over) and over == sorted(over), [(t.user_attrs["origin"], t.user_attrs["predicted_ms"]) for t in seeds]
    fit = study.user_attrs["accuracy_model"]
    evaluated = [t for t in study.trials if t.user_attrs.get("status") == "evaluated"]
    assert fit["trials"] == len(evaluated) >= MIN_TRIALS
    assert -1 <= fit["joint_spearman"] <= 1  # the candidates' own damage was measured and set against them
    recovery = study.user_attrs["recovery_weights"]
    assert recovery["trials"] == fit["trials"] and max(recovery["weights"].values()) == 1.0
    # trusted weights lead to allocations of their own, once the fine-tuned trials reach MIN_TRIALS
    # (in a space this small they may all be candidates the study already holds: those are not queued twice)
    assert recovery["trusted"] and study.user_attrs["reallocated_at"][0] == MIN_TRIALS
    for trial in [t for t in study.trials if t.user_attrs.get("origin", "").startswith("reallocation:")]:
        share = float(trial.user_attrs["origin"].split(":")[1].rstrip("x"))
        assert trial.user_attrs["predicted_ms"] <= share * outcome.budget_ms + 1e-9
    screened = [t for t in study.trials if t.user_attrs.get("status") == "screened"]
    assert screened, "the accuracy model screened nothing"
    assert all(t.state == optuna.trial.TrialState.PRUNED and "front point" in t.user_attrs["fail_reason"]
               and t.user_attrs["origin"] in SCREENED_ORIGINS for t in screened)
    # trials counts fine-tunes: neither screened proposals nor those told over the budget
    assert sum(t.user_attrs["status"] in ("evaluated", "stopped_early")
               for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 24
    seconds = [r["seconds"] for r in rows]
    run_search(replace(settings, trials=25), progress=False)  # resumed: read, not measured
    assert [r["seconds"] for r in _rows(tmp_path / "sensitivity")] == seconds
    # inspect --sensitivity on the search's folder shows the table the search ranked by
    assert main(["inspect", "reference_models:tiny_resnet", "--sensitivity", str(tmp_path), "--train-steps", "40",
                 "--top", "3"]) == 0
    shown = capsys.readouterr().out.splitlines()
    worst = max(rows[1:], key=lambda r: float(r["kl"]))["variable"]
    assert shown[2].startswith(worst) and "more variables" in shown[5]
    assert [r["seconds"] for r in _rows(tmp_path / "sensitivity")] == seconds
