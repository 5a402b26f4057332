import numpy as np
import pytest
import torch

from autocompress import (
    DatasetError,
    ModelResolutionError,
    WeightsMismatchError,
    load_dataset,
    resolve_model,
)
from autocompress.train.models import load_weights


def test_torchvision_names_with_and_without_prefix():
    a = resolve_model("resnet18", num_classes=7)
    b = resolve_model("torchvision:mobilenet_v3_small", num_classes=3)
    assert a.fc.out_features == 7 and b.classifier[-1].out_features == 3


def test_factory_spec_gets_num_classes():
    model = resolve_model("autocompress.zoo:transformer_classifier", num_classes=4)
    assert model.head.out_features == 4


@pytest.mark.parametrize("spec, message", [
    ("resnet99", "not a torchvision classification model"),
    ("no_such_pkg.mod:make", "cannot import module"),
    ("autocompress.zoo:nothing_here", "has no callable"),
    ("", "empty"),
])
def test_bad_model_specs_say_what_to_do(spec, message):
    with pytest.raises(ModelResolutionError, match=message):
        resolve_model(spec)


def test_weights_round_trip_and_mismatch_lists_keys(tmp_path):
    model = resolve_model("resnet18")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = resolve_model("resnet18", weights=path)
    assert torch.equal(again.conv1.weight, model.conv1.weight)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: classifier\.1\.bias, .*\(\+306 more\); unexpected keys: bn1\.bias"):
        resolve_model("mobilenet_v2", weights=path)
    with pytest.raises(WeightsMismatchError, match="wrong shape keys: fc.bias, fc.weight"):
        resolve_model("resnet18", num_classes=5, weights=path)


def test_weights_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(WeightsMismatchError, match="not a loadable state dict"):
        load_weights(resolve_model("resnet18"), path)
    with pytest.raises(WeightsMismatchError, match="does not exist"):
        load_weights(resolve_model("resnet18"), tmp_path / "absent.pt")


def test_digits_split_is_stratified_and_fixed(digits):
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == 360
    x, y = digits.val.tensors
    assert x.shape[1:] == (3, 32, 32)
    counts = np.bincount(y.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_dataset("digits", image_size=32)
    assert torch.equal(again.val.tensors[1], y)


def test_imagefolder_loads_small_png_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    splits = load_dataset(f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.4)
    assert splits.num_classes == 2
    assert len(splits.train) == 6 and len(splits.val) == 4
    assert splits.train[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("name, message", [
    ("mnist", "unknown data set"), ("imagefolder:/no/such/dir", "does not exist"), ("cifar10", "download it"),
])
def test_bad_datasets_say_what_to_do(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset(name)
