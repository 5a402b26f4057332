"""Measured sensitivities: each decision value alone on the trained model, cached, and what repair ranks by."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from autocompress.core.analysis import analyze
from autocompress.core.space import Space, SpaceOptions
from autocompress.search.boundary import repair_to_budget
from autocompress.train.data import load_dataset
from autocompress.train.sensitivity import REFERENCE, SensitivityConfig, measure_sensitivities
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


def test_repair_ranked_by_measured_damage_avoids_the_decision_that_hurts_most(trained, tmp_path):
    model, space, example, images, splits = trained
    table = measure_sensitivities(model, space, example, images, splits.train, tmp_path, config=CONFIG,
                                  progress=False)

    class MacsOnly:  # latency proportional to kept MACs, so both rankings face the same prices
        quantization_rules = None

        def predict_candidates(self, analysis, candidates):
            from autocompress.core.accounting import footprint_of_candidate
            return [footprint_of_candidate(analysis, c).macs / 1e6 for c in candidates], None

    hardware = MacsOnly()
    full = hardware.predict_candidates(space.analysis, [space.default()])[0][0]
    budget = 0.7 * full
    measured, _ = repair_to_budget(space, hardware, space.default(), budget, damage=table.kl)
    proxy, _ = repair_to_budget(space, hardware, space.default(), budget)
    assert hardware.predict_candidates(space.analysis, [measured])[0][0] <= budget

    def total_damage(candidate):
        return sum(table.kl(v.name, candidate.of(v.kind).get(v.unit, space.neutral(v))) for v in space.variables)

    assert total_damage(measured) <= total_damage(proxy)


def test_a_search_that_repairs_by_sensitivity_measures_them_once_into_its_folder(tmp_path):
    from autocompress.search.problem import ProblemSpec
    from autocompress.search.run import SearchSettings, run_search
    from autocompress.train.finetune import DistillationConfig

    spec = ProblemSpec(model="reference_models:tiny_resnet", train_steps=40)
    settings = SearchSettings(problem=spec, budget="0.6x", out=tmp_path, trials=4, finetune=DistillationConfig(steps=4),
                              repair_by="sensitivity")
    run_search(settings, progress=False)
    rows = _rows(tmp_path / "sensitivity")
    assert rows[0]["variable"] == REFERENCE and len(rows) > 10
    assert (tmp_path / "sensitivity" / "sensitivity.png").stat().st_size > 1000
    assert json.loads((tmp_path / "search.json").read_text())["repair_by"] == "sensitivity"
    seconds = [r["seconds"] for r in rows]
    run_search(SearchSettings(**{**settings.__dict__, "trials": 5}), progress=False)  # resumed: read, not measured
    assert [r["seconds"] for r in _rows(tmp_path / "sensitivity")] == seconds
