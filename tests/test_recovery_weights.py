"""Recovery weights: how much of each technique's measured damage the fine-tunes leave, learned from trials."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from autocompress.core.analysis import analyze
from autocompress.core.space import Space, SpaceOptions
from autocompress.search.recovery_weights import fit_recovery_weights
from autocompress.search.surrogate import MIN_TRIALS, damage_by_kind
from autocompress.zoo import small_resnet


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    model = small_resnet(widths=(16, 32)).eval()
    return Space(analyze(model, torch.randn(1, 3, 16, 16)),
                 SpaceOptions(prune_ratios=(0.0, 0.5, 0.875), bit_widths=(32, 8, 4), rank_ratios=(1.0,),
                              shrink_kernels=False))


def _raw(name: str, value) -> float:
    """Damages as the sensitivities show them: pruning's large, low bit widths' small."""
    kind = name.split("/")[0]
    if kind == "prune":
        return 2.0 * value
    if kind == "bits":
        return {32: 0.0, 8: 0.01, 4: 0.2}[value]
    return 0.5


def test_weights_learn_that_the_fine_tune_recovers_pruning_and_rank_trials_better_than_the_raw_sum(space):
    rng, noise = random.Random(0), np.random.default_rng(0)
    candidates = [space.sample(rng, density=rng.uniform(0.05, 0.6)) for _ in range(60)]
    # after the fine-tune, pruning's damage is nearly gone and the bit widths' is all there
    accuracy = [0.99 - 0.3 * (d["bits"] + 0.01 * d["prune"]) + noise.normal(0, 0.002)
                for d in (damage_by_kind(space, c, _raw) for c in candidates)]
    learned = fit_recovery_weights(space, _raw, candidates, accuracy)
    assert learned.weights["bits"] == 1.0 and learned.weights["prune"] < 0.1, learned
    assert learned.trusted and learned.held_out_spearman > learned.raw_spearman + 0.2, learned
    weighted = learned.damage(space, _raw)
    prune = next(v for v in space.variables if v.kind == "prune")
    bits = next(v for v in space.variables if v.kind == "bits")
    assert weighted(prune.name, 0.5) == pytest.approx(learned.weights["prune"] * 1.0)
    assert weighted(bits.name, 4) == pytest.approx(0.2)
    assert learned.to_dict()["trusted"] is True


def test_too_few_trials_or_no_pattern_leave_the_raw_damages_in_charge(space):
    rng, noise = random.Random(1), np.random.default_rng(1)
    candidates = [space.sample(rng, density=0.3) for _ in range(40)]
    few = fit_recovery_weights(space, _raw, candidates[: MIN_TRIALS - 1], [0.9] * (MIN_TRIALS - 1))
    assert not few.trusted and set(few.weights.values()) == {1.0} and few.held_out_spearman is None
    # accuracies unrelated to any damage: nothing to learn, nothing trusted over the raw sum's (also empty) ranking
    unrelated = fit_recovery_weights(space, _raw, candidates, list(noise.uniform(0.5, 0.99, len(candidates))))
    assert not unrelated.trusted or unrelated.held_out_spearman < 0.4, unrelated
    assert min(unrelated.weights.values()) >= 0.02  # no technique turns free


def test_when_every_technique_keeps_its_damage_the_weights_stay_even(space):
    rng, noise = random.Random(2), np.random.default_rng(2)
    candidates = [space.sample(rng, density=rng.uniform(0.05, 0.6)) for _ in range(60)]
    # the fine-tune recovers nothing of anyone's damage: the raw sum is the right ranking
    accuracy = [0.99 - 0.05 * sum(damage_by_kind(space, c, _raw).values()) + noise.normal(0, 0.002)
                for c in candidates]
    learned = fit_recovery_weights(space, _raw, candidates, accuracy)
    changed = {kind for c in candidates for kind, d in damage_by_kind(space, c, _raw).items() if d > 0}
    assert {k: round(learned.weights[k], 2) for k in changed} == pytest.approx(dict.fromkeys(changed, 1.0), abs=0.15)
    assert learned.held_out_spearman == pytest.approx(learned.raw_spearman, abs=0.05), learned
