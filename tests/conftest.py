"""Shared fixtures: the digits data set, tiny synthetic models, and briefly trained real models."""

from __future__ import annotations

import pytest
import torch
from reference_models import COVERAGE_MODELS, tiny_resnet
from torch import nn

from autocompress.train.data import load_dataset
from autocompress.train.models import resolve_model
from autocompress.train.training import train_classifier


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", image_size=32)


@pytest.fixture(scope="session")
def example_input(digits):
    return digits.val[0][0].unsqueeze(0)


@pytest.fixture(scope="session")
def trained_models(digits):
    """Spec -> model trained on digits, built on first use and shared by the whole session."""
    cache: dict[str, nn.Module] = {}

    def get(spec: str) -> nn.Module:
        if spec not in cache:
            torch.manual_seed(0)
            cache[spec] = train_classifier(resolve_model(spec), digits.train, steps=COVERAGE_MODELS[spec])
        return cache[spec]

    return get


@pytest.fixture
def tiny():
    return tiny_resnet()
