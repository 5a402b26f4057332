"""The baseline trained to a plateau of its held-out accuracy, within caps, and cached by its mode."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.cli.main import main
from autocompress.errors import AutocompressError
from autocompress.search.problem import ProblemSpec
from autocompress.train.baseline import baseline_model, baseline_training
from autocompress.train.plateau import PlateauConfig, held_out_split, train_to_plateau
from autocompress.train.training import accuracy

QUICK = PlateauConfig(eval_every=5, patience=2, time_cap_s=1e9, batch_size=32, lr=0.05)


def _separable(count=200, seed=0, flipped=0.0):
    """Two classes told apart by the sign of the first pixel; ``flipped``: the share of labels
    turned over at random, so that no weights get every held-out image right."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 4, 4, generator=generator)
    labels = (images[:, 0, 0, 0] > 0).long()
    images[:, 0, 0, 0] += torch.where(labels == 1, 3.0, -3.0)
    flip = torch.rand(count, generator=generator) < flipped
    return TensorDataset(images, torch.where(flip, 1 - labels, labels))


def _linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 2))


def test_the_held_out_part_is_a_fixed_disjoint_tenth_of_the_training_split():
    data = _separable(200)
    fit, held_out = held_out_split(data, QUICK)
    assert len(held_out) == 20 and len(fit) == 180
    assert not set(fit.indices) & set(held_out.indices)
    assert held_out_split(data, QUICK)[1].indices == held_out.indices
    assert len(held_out_split(_separable(50_000 // 40), PlateauConfig(held_out_max=100))[1]) == 100


def test_a_learnable_task_trains_to_its_plateau_and_keeps_the_best_weights():
    model, data = _linear(), _separable(flipped=0.15)
    run = train_to_plateau(model, data, QUICK)
    assert run.stopped == "plateau" and run.steps < QUICK.max_steps
    # a plateau: the rounds of patience, twice (once more after the learning rate dropped), after the best
    assert run.steps >= run.best_step + 2 * QUICK.patience * QUICK.eval_every
    assert 0.6 <= run.held_out_accuracy < 1.0 and run.under_trained() is None
    _, held_out = held_out_split(data, QUICK)
    assert accuracy(model, held_out) == run.held_out_accuracy  # the weights kept are the best ones


def test_a_cap_after_the_first_plateau_is_not_called_under_trained():
    data = _separable(flipped=0.15)
    whole = train_to_plateau(_linear(), data, QUICK)  # two plateaus: at the first rate, then the lower one
    capped = train_to_plateau(_linear(), data, PlateauConfig(**{**QUICK.__dict__, "max_steps": whole.steps - 1}))
    assert whole.plateaus == 2 and capped.stopped == "step_cap" and capped.plateaus == 1
    assert capped.under_trained() is None and capped.held_out_accuracy == whole.held_out_accuracy


class _Versioned(nn.Linear):
    """Refuses a state without its saved version, as torchvision's MNASNet does."""
    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2 instead of {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_the_best_weights_load_back_into_a_model_that_checks_their_version():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), _Versioned(48, 2))
    run = train_to_plateau(model, _separable(flipped=0.15), QUICK)
    _, held_out = held_out_split(_separable(flipped=0.15), QUICK)
    assert run.stopped == "plateau" and accuracy(model, held_out) == run.held_out_accuracy


def test_every_held_out_image_right_ends_the_training_at_once_and_is_not_under_trained():
    model, data = _linear(), _separable()
    run = train_to_plateau(model, data, PlateauConfig(**{**QUICK.__dict__, "patience": 50}))
    # without the ceiling the patience above would hold it for 2 x 50 more rounds
    assert run.stopped == "ceiling" and run.steps == run.best_step < 50 * QUICK.eval_every
    assert run.held_out_accuracy == 1.0 and run.train_accuracy >= 0.95 and run.under_trained() is None
    _, held_out = held_out_split(data, QUICK)
    assert accuracy(model, held_out) == 1.0


@pytest.mark.parametrize("cap, stopped, says", [({"max_steps": 3}, "step_cap", "stopped at the step cap after 3 steps"),
                                                ({"time_cap_s": 1e-9}, "time_cap", "--train-time-cap after 1 steps")])
def test_a_cap_stops_the_training_and_the_baseline_is_called_under_trained(cap, stopped, says):
    run = train_to_plateau(_linear(), _separable(), PlateauConfig(**{**QUICK.__dict__, **cap}))
    assert run.stopped == stopped and run.steps == cap.get("max_steps", 1)
    assert says in run.under_trained() and run.under_trained().endswith("pass --weights")
    assert run.to_dict()["under_trained"] == run.under_trained()


def test_a_model_that_cannot_fit_its_data_plateaus_and_is_called_under_trained():
    images = torch.zeros(200, 3, 4, 4)  # nothing to tell the classes apart by
    labels = torch.arange(200) % 2
    run = train_to_plateau(_linear(), TensorDataset(images, labels), QUICK)
    assert run.stopped == "plateau" and run.train_accuracy <= 0.7  # one class for every image
    assert run.under_trained().startswith("the baseline classifies only")


def test_the_baseline_cache_keys_on_the_mode_and_records_how_it_trained(tmp_path, digits, caplog):
    arguments = dict(num_classes=10, weights=None, splits=digits, cache_dir=tmp_path, train_time_cap_s=1e-9)
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        baseline_model("reference_models:tiny_resnet", train_steps="auto", **arguments)
    recorded = json.loads((tmp_path / "baseline.json").read_text())
    assert recorded["steps"] == "auto" and recorded["time_cap_s"] == 1e-9
    training = baseline_training(tmp_path)
    assert training == recorded["training"] and training["steps"] == 1 and training["stopped"] == "time_cap"
    assert [r.getMessage() for r in caplog.records] == [training["under_trained"]]
    written = (tmp_path / "baseline.pt").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        baseline_model("reference_models:tiny_resnet", train_steps="auto", **arguments)  # cached: not trained again
    assert (tmp_path / "baseline.pt").stat().st_mtime_ns == written
    assert [r.getMessage() for r in caplog.records] == [training["under_trained"]]  # and still said
    baseline_model("reference_models:tiny_resnet", train_steps=2, **arguments)  # another mode: trained anew
    assert baseline_training(tmp_path) == {"steps": 2, "stopped": "fixed_steps"}


def test_train_steps_is_auto_or_a_count(tmp_path, capsys):
    assert ProblemSpec(model="resnet18").train_steps == "auto"
    assert "train_time_cap_s" not in ProblemSpec(model="resnet18").to_dict()
    assert ProblemSpec(model="resnet18", train_time_cap_s=60.0).to_dict()["train_time_cap_s"] == 60.0
    with pytest.raises(AutocompressError, match=r"^train_steps 'soon': give auto or a number of steps"):
        ProblemSpec(model="resnet18", train_steps="soon")
    for flag, value, says in (("--train-steps", "soon", "'soon' is neither auto nor a non-negative integer"),
                              ("--train-time-cap", "0", "'0' is not a positive number of seconds")):
        assert main(["search", "resnet18", "--budget", "0.5x", flag, value, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and flag in err and "\n" not in err


def test_a_transformer_trains_at_a_lower_warmed_up_rate_and_a_cnn_as_before():
    from autocompress.zoo import small_vit, two_conv_cnn

    vit = PlateauConfig.for_model(small_vit(depth=1, width=48, heads=3, mlp_dim=96), time_cap_s=9.0)
    assert (vit.lr, vit.warmup_steps, vit.time_cap_s) == (1e-3, 500, 9.0)
    assert PlateauConfig.for_model(two_conv_cnn()) == PlateauConfig()
    # the rate climbs over the warmup: after 5 of 10 warmup steps at 1.0, weights moved half as far
    # as AdamW's first steps at the full rate would move them (each step moves about lr)
    moved = {}
    for warmup in (0, 10):
        model, data = _linear(), _separable(64)
        start = model[1].weight.detach().clone()
        config = PlateauConfig(eval_every=5, patience=1, lr_drops=0, max_steps=5, batch_size=32, lr=0.01,
                               warmup_steps=warmup)
        train_to_plateau(model, data, config)
        moved[warmup] = float((model[1].weight.detach() - start).abs().max())
    assert moved[10] < 0.5 * moved[0]


def test_a_baseline_its_time_cap_cut_short_trains_on_from_its_weights_under_a_larger_cap(tmp_path, digits):
    arguments = dict(num_classes=10, weights=None, splits=digits, cache_dir=tmp_path)
    short = baseline_model("reference_models:tiny_resnet", train_steps="auto", train_time_cap_s=1e-9, **arguments)
    first = baseline_training(tmp_path)
    assert first["stopped"] == "time_cap" and first["steps"] == 1
    longer = baseline_model("reference_models:tiny_resnet", train_steps="auto", train_time_cap_s=2.0, **arguments)
    training = baseline_training(tmp_path)
    assert training["continued"] == first and training["steps"] > first["steps"]
    assert training["seconds"] > first["seconds"]
    assert json.loads((tmp_path / "baseline.json").read_text())["time_cap_s"] == 2.0
    # it went on from the short training's weights, not from a new initialisation
    assert accuracy(longer, digits.val) > accuracy(short, digits.val)
    # a smaller cap than the cached one's trains anew
    baseline_model("reference_models:tiny_resnet", train_steps="auto", train_time_cap_s=1e-9, **arguments)
    assert "continued" not in baseline_training(tmp_path)
