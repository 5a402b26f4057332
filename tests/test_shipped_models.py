"""Hardware models as an installed package ships them: CSVs gzipped, the install folder read-only."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from autocompress import Candidate, analyze
from autocompress.hardware.store import SHIPPED_MODELS, _read_cache, find_hardware_model, load_hardware_model

SOURCE = SHIPPED_MODELS / "ort-cpu-1t-avx2"
pytestmark = pytest.mark.slow  # fits a shipped predictor twice


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """The AVX2 model laid out as setup.py packs it, where the predictor cache cannot be written."""
    if not (SOURCE / "models.csv").is_file():
        pytest.skip("needs the repository's plain hardware_models/ (a source checkout)")
    folder = tmp_path / "site" / SOURCE.name
    folder.mkdir(parents=True)
    shutil.copyfile(SOURCE / "metadata.json", folder / "metadata.json")
    for name in ("kernels.csv", "models.csv"):
        with open(SOURCE / name, "rb") as plain, gzip.open(folder / f"{name}.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
    (folder / "predictor.joblib").mkdir()  # writing the cache beside the measurements fails, even as root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


def test_gzipped_measurements_predict_as_the_plain_ones_and_cache_in_the_user_folder(packaged, tmp_path, tiny):
    example = torch.randn(1, 3, 16, 16)
    analysis = analyze(tiny, example)
    candidate = Candidate(bits={"stem.0": 8}, channel_multiple=1)
    packed = load_hardware_model(packaged)
    plain_copy = tmp_path / "plain" / SOURCE.name
    shutil.copytree(SOURCE, plain_copy, ignore=shutil.ignore_patterns("predictor.*"))
    plain = load_hardware_model(plain_copy)
    assert packed.predict_candidate(analysis, candidate).ms == plain.predict_candidate(analysis, candidate).ms
    cached = list((tmp_path / "cache" / "autocompress" / "hardware_models").glob(f"{SOURCE.name}-*/predictor.json"))
    assert len(cached) == 1
    assert _read_cache(packaged) is not None  # the next load reads it instead of refitting
    assert find_hardware_model(roots=[packaged.parent]) == packaged
