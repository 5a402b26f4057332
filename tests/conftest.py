"""Shared fixtures: the digits data set, tiny synthetic models, briefly trained real models, and
the hardware models the suite predicts with.

Which hardware model ``auto`` picks depends on the host (``find_hardware_model``), and a test whose
outcome follows the host's pick tests the host, not the code. So the suite pins ``auto`` to one
shipped model (``--hardware-model``, default ``ort-cpu-1t``; its subprocesses and Ray workers
inherit the pin), and the tests that read a hardware model's predictions directly take
``shipped_hardware``, which runs them with each shipped model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from reference_models import COVERAGE_MODELS, TINY_SEARCH, tiny_resnet
from torch import nn

from autocompress.hardware.store import PIN_VARIABLE, SHIPPED_MODELS, load_hardware_model
from autocompress.search.problem import SearchProblem, build_problem
from autocompress.train.data import load_dataset
from autocompress.train.models import resolve_model
from autocompress.train.training import train_classifier


SHIPPED_HARDWARE = sorted(p.parent.name for p in SHIPPED_MODELS.glob("*/metadata.json"))
DEFAULT_PIN = "ort-cpu-1t"


def pytest_addoption(parser):
    parser.addoption("--hardware-model", default=os.environ.get(PIN_VARIABLE) or DEFAULT_PIN,
                     help="the hardware model `auto` means in this run: a shipped one's name or a folder "
                          f"(default {DEFAULT_PIN}; 'host': what this machine picks)")


def pytest_configure(config):
    pinned = config.getoption("--hardware-model")
    if pinned == "host":
        os.environ.pop(PIN_VARIABLE, None)
    else:
        os.environ[PIN_VARIABLE] = pinned


def pytest_report_header(config):
    pinned = os.environ.get(PIN_VARIABLE) or "the host's pick"
    return f"hardware model for 'auto': {pinned}"


@pytest.fixture(scope="session", params=SHIPPED_HARDWARE)
def shipped_hardware(request):
    """Each shipped hardware model in turn (loading one warns that it was measured elsewhere)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_hardware_model(Path(SHIPPED_MODELS / request.param))


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


@pytest.fixture(scope="session")
def tiny_baseline_dir(tmp_path_factory):
    """Where ``tiny_search_problem``'s baseline is cached: a search folder given copies of its
    baseline.pt and baseline.json reads them instead of training its own (``with_tiny_baseline``)."""
    return tmp_path_factory.mktemp("tiny_baseline")


@pytest.fixture(scope="session")
def tiny_search_problem(tiny_baseline_dir) -> SearchProblem:
    """``TINY_SEARCH`` built once a session. Searches given it (``run_search(problem=...)``) must not
    change it: give a search that measures sensitivities a problem of its own."""
    return build_problem(TINY_SEARCH, cache_dir=tiny_baseline_dir)


@pytest.fixture(scope="session")
def with_tiny_baseline(tiny_search_problem, tiny_baseline_dir):
    """``out`` -> ``out``, holding the tiny problem's cached baseline (so `export` finds the same one)."""
    import shutil

    def seed(out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("baseline.pt", "baseline.json"):
            shutil.copy(tiny_baseline_dir / name, out / name)
        return out

    return seed
