import json
import random

import optuna
import pytest
import torch

from autocompress import (
    Candidate,
    InvalidCandidateError,
    Space,
    SpaceOptions,
    analyze,
    resolve_model,
)


@pytest.fixture(scope="module")
def resnet_space():
    return Space(analyze(resolve_model("resnet18"), torch.randn(1, 3, 32, 32)))


def test_one_variable_per_unit_and_technique(resnet_space):
    kinds = {}
    for v in resnet_space.variables:
        kinds.setdefault(v.kind, []).append(v.unit)
    assert len(kinds["prune"]) == 12 and len(kinds["bits"]) == 21 and len(kinds["skip"]) == 5
    assert all(len(units) == len(set(units)) for units in kinds.values())
    assert resnet_space.variables[0].choices == (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    bits = next(v for v in resnet_space.variables if v.kind == "bits")
    assert bits.choices == (32, 16, 8, 4)
    kernel = next(v for v in resnet_space.variables if v.name == "kernel/conv1")
    assert kernel.choices == (7, 5, 3)


def test_rank_choices_only_where_they_save_parameters(resnet_space):
    # conv1 is 3->64 7x7: fan-in 147, full rank 64; rank 48 (0.75) costs 48*(147+64) > 64*147.
    assert resnet_space._by_name["rank/conv1"].choices == (1.0, 0.5, 0.25)
    assert resnet_space._by_name["rank/layer1.0.conv1"].choices == (1.0, 0.75, 0.5, 0.25)


def test_candidate_json_round_trip(resnet_space):
    candidate = resnet_space.sample(random.Random(0))
    text = candidate.to_json()
    assert json.loads(text)["channel_multiple"] == 8
    again = Candidate.from_json(text)
    assert again == candidate
    resnet_space.validate(again)


def test_density_zero_is_the_uncompressed_model(resnet_space):
    candidate = resnet_space.sample(random.Random(0), density=0.0)
    assert resnet_space.changed(candidate) == []
    light = resnet_space.sample(random.Random(0), density=0.2)
    full = resnet_space.sample(random.Random(0), density=1.0)
    assert 0 < len(resnet_space.changed(light)) < len(resnet_space.changed(full))


@pytest.mark.parametrize("data, message", [
    ({"prune": {"no.such.group": 0.5}}, "not a prune unit"),
    ({"bits": {"conv1": 3}}, "is not allowed"),
    ({"rank": {"conv1": 0.75}}, "is not allowed"),
    ({"colour": {}}, "unknown fields"),
])
def test_invalid_candidates_name_the_problem(resnet_space, data, message):
    with pytest.raises(InvalidCandidateError, match=message):
        resnet_space.validate(Candidate.from_dict(data))


def test_bad_json_is_an_invalid_candidate():
    with pytest.raises(InvalidCandidateError, match="not valid JSON"):
        Candidate.from_json("{prune: 1")
    with pytest.raises(InvalidCandidateError, match="map names to numbers"):
        Candidate.from_dict({"bits": {"conv1": "eight"}})


def test_suggest_through_optuna_gives_valid_candidates(resnet_space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen = set()
    for _ in range(5):
        trial = study.ask()
        candidate = resnet_space.suggest(trial)
        resnet_space.validate(candidate)
        assert resnet_space.from_params(trial.params) == candidate
        seen.add(candidate.to_json())
        study.tell(trial, 0.0)
    assert len(seen) == 5


def test_space_options_validate_themselves():
    with pytest.raises(ValueError, match="prune_ratios"):
        SpaceOptions(prune_ratios=(0.25, 0.5))
    with pytest.raises(ValueError, match="bit_widths"):
        SpaceOptions(bit_widths=(32, 2))
    with pytest.raises(ValueError, match="channel_multiple"):
        SpaceOptions(channel_multiple=0)
