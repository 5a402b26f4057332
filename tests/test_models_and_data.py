from pathlib import Path

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


def test_digits_splits_are_stratified_fixed_and_the_validation_images_are_those_before_the_test_split(digits):
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.val) == 360 and len(digits.test) == 360 and "held out" in digits.test_source
    assert digits.val[0][0].shape == (3, 32, 32)
    for split in (digits.val, digits.test):
        counts = np.bincount(split.targets(), minlength=10)
        assert counts.min() >= 35 and counts.max() <= 37
    again = load_dataset("digits", image_size=32)
    assert np.array_equal(again.val.indices, digits.val.indices)
    # the validation images are the ones a 80/20 split gave before there was a test split
    from sklearn.model_selection import train_test_split

    _, before = train_test_split(np.arange(1797), test_size=0.2, stratify=again.val.labels, random_state=0)
    assert np.array_equal(np.sort(before), digits.val.indices)
    assert not set(digits.test.indices) & set(digits.train.indices) | set(digits.val.indices) & set(digits.test.indices)


def test_imagefolder_reads_files_when_asked_and_holds_out_a_test_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    splits = load_dataset(f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.4)
    assert splits.num_classes == 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 2)
    assert splits.train[0][0].shape == (3, 16, 16) and splits.augmentation.crop and splits.augmentation.flip
    broken = str(tmp_path / "cat" / "0.png")
    Path(broken).write_text("not an image")  # files are read when an item is asked for, not before
    split = next(p for p in (splits.train, splits.val, splits.test) if broken in [f for f, _ in p.samples])
    with pytest.raises(DatasetError, match="0.png' is not a readable image"):
        split[[f for f, _ in split.samples].index(broken)]


def test_imagefolder_with_train_val_and_test_folders_is_used_as_given(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for part, count in (("train", 6), ("val", 2), ("test", 3)):
        for label in ("cat", "dog"):
            (tmp_path / part / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / part / label / f"{i}.png")
    splits = load_dataset(f"imagefolder:{tmp_path}", image_size=8, augment=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)
    assert "test/" in splits.test_source and not splits.augmentation.any
    assert sorted(int(y) for _, y in splits.test.samples) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "test" / "bird").mkdir()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "test" / "bird" / "0.png")
    with pytest.raises(DatasetError, match="classes that train/ lacks \\(bird\\)"):
        load_dataset(f"imagefolder:{tmp_path}", image_size=8)


def test_fashion_mnist_reads_from_debians_package_with_its_official_test_split():
    from autocompress.train.standard_sets import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    splits = load_dataset("fashion-mnist", image_size=32, root="/nonexistent")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert "official test split" in splits.test_source and splits.augmentation.flip
    assert np.bincount(splits.test.targets()).tolist() == [1000] * 10  # the published test split: 1,000 a class
    image, label = splits.test[0]
    assert image.shape == (3, 32, 32) and label == 9  # its first test image is an ankle boot
    assert -1.0 <= float(image.min()) < float(image.max()) <= 1.0


@pytest.mark.parametrize("name, message", [
    ("svhn", "unknown data set"), ("imagefolder:/no/such/dir", "does not exist"), ("cifar10", "download it"),
    ("mnist", "mnist is not under --data-root 'data'.*MNIST/raw"),
])
def test_bad_datasets_say_what_to_do(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset(name)
