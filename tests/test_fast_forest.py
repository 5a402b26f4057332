"""The compiled forests (hardware.forest) give exactly what scikit-learn's trees give, and the
predictor's fast path the same predictions as its scikit-learn path."""

from __future__ import annotations

import pickle
import random
import warnings

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesRegressor

from autocompress.hardware import forest as forest_module
from autocompress.hardware.candidates import model_under_test, random_candidate
from autocompress.hardware.forest import CompiledForests
from autocompress.hardware.kernels import OPS, candidate_table, kernel_table, kernel_weights, kernels_of_candidate
from autocompress.hardware.predictor import LatencyPredictor
from autocompress.hardware.store import DifferentMachineWarning, HardwareModel, load_hardware_model

TINY = "reference_models:tiny_resnet"


def _sklearn_per_tree(forest, X):
    return np.array([tree.predict(np.asarray(X, dtype=np.float32)) for tree in forest.estimators_])


def _forests(rng):
    """Three small forests: two on 5 features (one shallow), one on 7, all with 30 trees."""
    out = []
    for n_features, leaf in ((5, 1), (5, 20), (7, 2)):
        X = rng.normal(size=(300, n_features)).astype(np.float32) * rng.uniform(0.1, 100, n_features)
        X[:, 0] = np.round(X[:, 0])  # a feature with few distinct values, as kernel sizes have
        y = np.sin(X).sum(axis=1) + rng.normal(scale=0.1, size=len(X))
        out.append(ExtraTreesRegressor(n_estimators=30, min_samples_leaf=leaf, max_features=0.6,
                                       random_state=int(rng.integers(1000)), n_jobs=1).fit(X, y))
    return out


def _on_thresholds(rng, forest, rows: int) -> np.ndarray:
    """Rows with one feature set exactly at a threshold of one of the forest's nodes, or one
    float32 step either side of it."""
    X = rng.normal(size=(rows, forest.n_features_in_)) * 30
    for row in X:
        tree = forest.estimators_[rng.integers(len(forest.estimators_))].tree_
        node = rng.choice(np.flatnonzero(tree.children_left >= 0))
        at = np.float32(tree.threshold[node])
        row[tree.feature[node]] = rng.choice([at, np.nextafter(at, np.float32(-np.inf)),
                                              np.nextafter(at, np.float32(np.inf))])
    return X


@pytest.mark.parametrize("tiny_chunks", [False, True])
def test_compiled_forests_give_each_trees_prediction_and_the_forests_mean(tiny_chunks, monkeypatch):
    if tiny_chunks:  # many chunks, and finished pairs dropped however few walk
        monkeypatch.setattr(forest_module, "_COMPACT_ABOVE", 10)
        monkeypatch.setattr(forest_module, "_PAIRS_PER_CHUNK", 700)
    rng = np.random.default_rng(0)
    forests = _forests(rng)
    compiled = CompiledForests(forests)
    blocks = [np.vstack([rng.normal(size=(200, f.n_features_in_)) * 30, _on_thresholds(rng, f, 400)]) for f in forests]
    # Rows of the narrower forests sit in a wider matrix; their extra columns are never read.
    width = max(b.shape[1] for b in blocks)
    X = np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=1e30) for b in blocks])
    which = np.repeat(np.arange(len(forests)), [len(b) for b in blocks])
    order = rng.permutation(len(X))  # forests interleaved, as kernels of different ops are
    per_tree = compiled.per_tree(X[order], which[order])
    assert per_tree.shape == (30, len(X))
    for f, forest in enumerate(forests):
        mine = per_tree[:, which[order] == f]
        X_f = X[order][which[order] == f][:, :forest.n_features_in_]
        assert np.array_equal(mine, _sklearn_per_tree(forest, X_f))
        assert np.array_equal(compiled.mean(mine), forest.predict(X_f))
        assert np.array_equal(compiled.mean(mine[:, :1]), forest.predict(X_f[:1]))
    for mine, block, forest in zip(compiled.per_forest(blocks), blocks, forests):
        assert np.array_equal(mine, _sklearn_per_tree(forest, block))
    for few in (1, 7):  # few pairs: walked without dropping any
        assert np.array_equal(compiled.per_tree(X[order[:few]], which[order[:few]]), per_tree[:, :few])


def test_compiled_forests_leave_missing_values_and_empty_inputs_to_sklearn_semantics():
    rng = np.random.default_rng(1)
    forests = _forests(rng)
    compiled = CompiledForests(forests)
    X = rng.normal(size=(20, 7)) * 30
    X[::3, 1] = np.nan
    assert np.array_equal(compiled.per_tree(X[:, :5], np.zeros(20, dtype=int)), _sklearn_per_tree(forests[0], X[:, :5]))
    assert compiled.per_tree(np.zeros((0, 7)), np.zeros(0, dtype=int)).shape == (30, 0)
    with pytest.raises(ValueError, match="features"):
        compiled.per_tree(X[:, :5], np.full(20, 2))
    with pytest.raises(ValueError, match="as many trees"):
        CompiledForests([forests[0], ExtraTreesRegressor(n_estimators=3).fit(X[:, :3] * 0, X[:, 0] * 0)])


def _law(table: np.ndarray) -> np.ndarray:
    """A made-up latency per kernel: MACs at a per-bit speed, a cost per call and per channel."""
    bits, cout, out_h, out_w = table[:, 1], table[:, 3], table[:, 8], table[:, 9]
    speed = np.select([bits == 8, bits == 4], [3.0, 0.5], 1.0)
    return 0.005 + kernel_weights(table) * out_h * out_w / speed / 3e9 + 1e-5 * cout


@pytest.fixture(scope="module")
def fitted():
    """A predictor fit (small forests) with a made-up latency law on the kernels of random
    candidates of a tiny ResNet with a depthwise conv (convs, depthwise convs and linears at every
    bit width; the rarer ones fall back to the pooled kernel model)."""
    rng = random.Random(0)
    target = model_under_test(TINY, 16)
    tables = [kernel_table(kernels_of_candidate(target.analysis, random_candidate(target, rng))) for _ in range(60)]
    kernels = np.unique(np.concatenate(tables), axis=0)
    kernel_ms = _law(kernels) * np.random.default_rng(0).lognormal(0, 0.05, len(kernels))
    candidate_ms = np.array([_law(t).sum() * (0.8 + 0.05 * np.log(len(t))) for t in tables])
    data = kernels, kernel_ms, tables, candidate_ms
    return LatencyPredictor(n_estimators=30).fit(*data), target, data


def _assert_same(fast, slow):
    assert fast.ms == pytest.approx(slow.ms, rel=1e-9, abs=0)
    assert fast.std_ms == pytest.approx(slow.std_ms, rel=1e-9, abs=0)
    assert list(fast.per_layer_ms) == list(slow.per_layer_ms)
    assert list(fast.per_layer_ms.values()) == pytest.approx(list(slow.per_layer_ms.values()), rel=1e-9, abs=0)


def test_the_fast_path_predicts_what_sklearn_does(fitted):
    predictor, target, _ = fitted
    rng = random.Random(1)
    candidates = [kernels_of_candidate(target.analysis, random_candidate(target, rng)) for _ in range(100)]
    ops = {(OPS.index(k.op), k.bits) for c in candidates for k in c}
    assert ops & set(predictor.kernel_models_) and ops - set(predictor.kernel_models_)  # fit models and the fallback
    for kernels in candidates[:40]:
        _assert_same(predictor.predict(kernels), predictor.predict(kernels, compiled=False))
    ms, std = predictor.predict_many(candidates)
    slow_ms, slow_std = predictor.predict_many(candidates, compiled=False)
    np.testing.assert_allclose(ms, slow_ms, rtol=1e-9, atol=0)
    np.testing.assert_allclose(std, slow_std, rtol=1e-9, atol=0)
    assert ms[0] == pytest.approx(predictor.predict(candidates[0]).ms, rel=1e-9)


def test_the_compiled_forests_are_not_pickled_and_a_refit_replaces_them(fitted):
    predictor, target, (kernels_alone, kernel_ms, tables, candidate_ms) = fitted
    kernels = kernels_of_candidate(target.analysis, random_candidate(target, random.Random(2)))
    before = predictor.predict(kernels)
    assert predictor._compiled_ is not None
    loaded = pickle.loads(pickle.dumps(predictor))
    assert getattr(loaded, "_compiled_", None) is None
    _assert_same(loaded.predict(kernels), before)
    assert b"CompiledForests" not in pickle.dumps(predictor)
    # Refit on other data, the predictor prices with its new trees, not the compiled old ones.
    loaded.fit(kernels_alone, kernel_ms * 2, tables, candidate_ms * 2)
    assert loaded.predict(kernels).ms != pytest.approx(before.ms, rel=1e-3)
    _assert_same(loaded.predict(kernels), loaded.predict(kernels, compiled=False))


def test_a_candidates_table_is_the_table_of_its_kernels_with_their_layers(fitted):
    _, target, _ = fitted
    rng, ops = random.Random(4), set()
    vit = model_under_test("autocompress.zoo:small_vit", 32)  # attention kernels
    for i in range(24):
        target = vit if i % 4 == 0 else fitted[1]
        candidate = random_candidate(target, rng)
        kernels = kernels_of_candidate(target.analysis, candidate)
        table, layers = candidate_table(target.analysis, candidate)
        np.testing.assert_array_equal(table, kernel_table(kernels))
        assert layers == [k.layer for k in kernels]
        ops |= {k.op for k in kernels}
    assert ops == set(OPS)  # every op's index written as kernel_table writes it


def test_kernels_priced_ahead_give_the_same_predictions_and_are_not_walked_again(fitted):
    """``learn_kernels`` (a search's start) fills stage 1's memory: the candidates made of those
    kernels are predicted as a fresh predictor predicts them, and stage 1's trees are not walked."""
    predictor, target, _ = fitted
    rng = random.Random(5)
    candidates = [random_candidate(target, rng) for _ in range(30)]
    fresh = pickle.loads(pickle.dumps(predictor))  # nothing priced yet
    expected = [fresh.predict(kernels_of_candidate(target.analysis, c)) for c in candidates]
    warm = pickle.loads(pickle.dumps(predictor))
    HardwareModel(warm, {}).learn_kernels(target.analysis, candidates)
    walked = []
    stage1 = warm._compiled_models()[0].forests
    original = stage1.per_tree
    stage1.per_tree = lambda X, forest: walked.append(len(X)) or original(X, forest)
    hardware = HardwareModel(warm, {})
    for candidate, reference in zip(candidates, expected):
        _assert_same(hardware.predict_candidate(target.analysis, candidate), reference)
    assert walked == []
    ms, std = hardware.predict_candidates(target.analysis, candidates)
    np.testing.assert_allclose(ms, [e.ms for e in expected], rtol=1e-9, atol=0)
    np.testing.assert_allclose(std, [e.std_ms for e in expected], rtol=1e-9, atol=0)
    assert walked == []
    hardware.predict_candidate(target.analysis, random_candidate(target, random.Random(6)))  # one never priced
    assert walked


@pytest.mark.slow
def test_the_shipped_hardware_model_predicts_the_same_on_the_fast_path():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DifferentMachineWarning)  # the trees are what is compared, not the machine
        hardware = load_hardware_model("hardware_models/ort-cpu-1t-amx")
    rng = random.Random(3)
    for spec in ("resnet18", "mobilenet_v2", "efficientnet_b0"):
        target = model_under_test(spec, 32)
        candidates = [random_candidate(target, rng) for _ in range(100)]
        for candidate in candidates[:10]:
            kernels = kernels_of_candidate(target.analysis, candidate)
            _assert_same(hardware.predictor.predict(kernels), hardware.predictor.predict(kernels, compiled=False))
        kernels = [kernels_of_candidate(target.analysis, c) for c in candidates]
        for fast, slow in zip(hardware.predictor.predict_many(kernels),
                              hardware.predictor.predict_many(kernels, compiled=False)):
            np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=0)


def test_the_fitted_predictor_keeps_its_feature_names_and_refuses_other_columns(fitted):
    import copy

    from sklearn.exceptions import NotFittedError

    predictor, target, _ = fitted
    names = predictor.composition_features_
    assert names[0] == "log_time_alone" and len(names) == len(set(names))
    assert {"time_share_dwconv_int8", "weight_mb_4bit", "log_kernels", "gated_mfloats"} <= set(names)
    kernels = kernels_of_candidate(target.analysis, random_candidate(target, random.Random(2)))
    assert predictor.predict(kernels).ms > 0
    other = copy.copy(predictor)
    other.composition_features_ = (*names[1:], names[0])  # the same columns in another order
    with pytest.raises(NotFittedError, match="was fit on the features"):
        other.predict(kernels)
    terms = predictor.excess_terms_
    assert len(terms) == len(predictor.excess_.coef_) and terms[-1] == "streamed_float_mweights"
    assert {"int8_mweights", "kernels", "constant"} <= set(terms)
    other = copy.copy(predictor)
    other.excess_terms_ = terms[:-1]  # a term fewer than this version builds
    with pytest.raises(NotFittedError, match="was fit on the excess terms"):
        other.predict(kernels)
