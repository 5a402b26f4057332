"""Fitted scikit-learn forests, flattened into numpy arrays and evaluated for many rows at once.

The latency predictor asks a dozen forests of a hundred trees about every candidate it prices.
Through scikit-learn, each forest call pays input validation and a joblib dispatch per tree,
which cost far more than walking the trees for one candidate's few dozen kernels. Here every
tree of every forest is one set of node arrays, and all (row, tree) pairs descend together, one
tree level per numpy step, in a handful of numpy calls per level whatever the number of forests,
trees and rows. The fitted forests stay the source of truth: this is built from them (not
pickled with them), and gives their trees' predictions exactly (tests hold it to ``tree.predict``).

Scikit-learn's trees cast the features to float32 and send a row left when ``x <= threshold``,
a float64. For a float32 ``x`` that is ``x <= t``, with ``t`` the largest float32 not above the
threshold, so thresholds are kept as such float32s (half the memory, same decisions). Nodes are
renumbered breadth-first so that a node's two children sit side by side (right = left + 1), and a
leaf is its own child with an infinite threshold: a pair at a leaf stays there while others walk.
"""

from __future__ import annotations

import numpy as np

from .kernels import OPS

__all__ = ["CompiledForests", "CompiledKernelModels", "heads_per_tree", "sklearn_per_forest"]

# Levels all pairs descend before the first look for those at a leaf, then between looks: few
# reach a leaf near the root. A look drops the finished pairs, which shortens every later level,
# when many walk; with few, numpy's per-call cost outweighs the work saved, so the look only ends
# the walk once all are at a leaf.
_FIRST_CHECK = 6
_LEVELS_BETWEEN_CHECKS = 2
_COMPACT_ABOVE = 2_000
# Pairs walked at once: enough to spread numpy's per-call cost, few enough that a level's
# temporaries stay in the processor's cache (walked whole, a large batch spills to memory).
_PAIRS_PER_CHUNK = 50_000
# Kernel rows whose stage-1 prediction is kept (a few hundred bytes each); past it, start afresh.
_KNOWN_KERNELS = 200_000


class CompiledForests:
    """Forests (fitted ``ExtraTreesRegressor``s or any with ``estimators_`` of sklearn trees, all
    with as many trees) as flat arrays. ``per_tree(X, forest)`` is every tree's prediction."""

    def __init__(self, forests: list) -> None:
        self.forests = list(forests)
        counts = {len(forest.estimators_) for forest in self.forests}
        if len(counts) != 1 or any(forest.n_outputs_ != 1 for forest in self.forests):
            raise ValueError(f"forests must have one output and as many trees each, got {sorted(counts)} trees")
        self.n_trees = counts.pop()
        trees = [estimator.tree_ for forest in self.forests for estimator in forest.estimators_]
        self.n_features = np.array([forest.n_features_in_ for forest in self.forests])
        self.depth = np.array([max(e.tree_.max_depth for e in forest.estimators_) for forest in self.forests])
        starts = np.cumsum([0] + [tree.node_count for tree in trees])
        left, right = (np.concatenate([np.where(side < 0, -1, side + start) for side, start in zip(sides, starts)])
                       for sides in ([t.children_left for t in trees], [t.children_right for t in trees]))
        new = np.empty(starts[-1], dtype=np.intp)  # the breadth-first number of each node
        child = np.empty(starts[-1], dtype=np.intp)  # by new number: the left child's (right is next)
        frontier = starts[:-1]  # the roots, numbered 0..trees-1: forest f's tree j is f * n_trees + j
        new[frontier] = np.arange(len(frontier))
        numbered = len(frontier)
        while len(frontier):
            internal = frontier[left[frontier] >= 0]
            kids = np.column_stack([left[internal], right[internal]]).ravel()
            new[kids] = numbered + np.arange(len(kids))
            child[new[internal]] = new[kids[::2]]
            leaves = new[frontier[left[frontier] < 0]]
            child[leaves] = leaves
            numbered += len(kids)
            frontier = kids
        is_leaf = left < 0
        self.child = child
        self.feature = np.empty(len(child), dtype=np.int16 if self.n_features.max() < 2 ** 15 else np.intp)
        self.feature[new] = np.where(is_leaf, 0, np.concatenate([t.feature for t in trees]))
        threshold = np.where(is_leaf, np.inf, np.concatenate([t.threshold for t in trees]))
        below = threshold.astype(np.float32)
        above = below > threshold  # rounded up: take the float32 just below instead
        below[above] = np.nextafter(below[above], np.float32(-np.inf))
        self.threshold = np.empty(len(child), dtype=np.float32)
        self.threshold[new] = below
        self.value = np.empty(len(child))
        self.value[new] = np.concatenate([t.value[:, 0, 0] for t in trees])
        self.is_leaf = np.empty(len(child), dtype=bool)
        self.is_leaf[new] = is_leaf

    def per_tree(self, X: np.ndarray, forest: np.ndarray) -> np.ndarray:
        """(trees, rows): tree j of ``forests[forest[i]]`` on row i of ``X``. Rows may be wider
        than their forest's features (the extra columns are never read). A forest's ``predict``
        is ``mean`` of it."""
        X = np.asarray(X, dtype=np.float32)  # what sklearn hands its trees
        forest = np.asarray(forest, dtype=np.intp)
        n, width = X.shape
        out = np.empty((self.n_trees, n))
        if n == 0:
            return out
        if width < self.n_features[forest].max():
            raise ValueError(f"rows have {width} features, a forest reads {self.n_features[forest].max()}")
        if np.isnan(X).any():  # a missing value goes where the tree's fit decided: sklearn knows
            return self._sklearn_per_tree(X, forest)
        x, tree = X.ravel(), np.arange(self.n_trees)[:, None]
        chunk = max(1, _PAIRS_PER_CHUNK // self.n_trees)
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            roots = (forest[rows] * self.n_trees + tree).ravel()  # tree-major: tree j's pairs together
            offsets = np.tile(np.arange(n)[rows] * width, self.n_trees)
            leaves = self._descend(roots, offsets, x, int(self.depth[forest[rows]].max()))
            out[:, rows] = self.value[leaves].reshape(self.n_trees, -1)
        return out

    @staticmethod
    def mean(per_tree: np.ndarray) -> np.ndarray:
        """The mean over trees of ``per_tree``, added up one tree after the other as a forest's
        ``predict`` does. Numpy sums a C-ordered (trees, rows) array down its columns in that order,
        unless there is a single column, which it sums pairwise; accumulate is in order (and slow)."""
        per_tree = np.ascontiguousarray(per_tree)
        total = per_tree.sum(axis=0) if per_tree.shape[1] > 1 else np.add.accumulate(per_tree)[-1]
        return total / len(per_tree)

    def per_forest(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """``per_tree`` of each block of rows by the forest at its place, in one pass."""
        X = np.zeros((sum(len(b) for b in blocks), max(b.shape[1] for b in blocks)), dtype=np.float32)
        bounds = np.cumsum([0] + [len(b) for b in blocks])
        for block, start, stop in zip(blocks, bounds, bounds[1:]):
            X[start:stop, :block.shape[1]] = block
        out = self.per_tree(X, np.repeat(np.arange(len(blocks)), np.diff(bounds)))
        return [out[:, start:stop] for start, stop in zip(bounds, bounds[1:])]

    def _descend(self, node: np.ndarray, offsets: np.ndarray, x: np.ndarray, depth: int) -> np.ndarray:
        """The leaf each (root, row offset) pair ends at: all pairs step down a level at once."""
        child, feature, threshold = self.child, self.feature, self.threshold
        leaves, at, level = node, None, 0  # at: the place in leaves of each pair still walking
        while level < depth:
            steps = min(_FIRST_CHECK if level == 0 else _LEVELS_BETWEEN_CHECKS, depth - level)
            for _ in range(steps):
                node = child[node] + (x[offsets + feature[node]] > threshold[node])
            level += steps
            done = self.is_leaf[node]
            if len(node) <= _COMPACT_ABOVE:  # few: dropping finished pairs costs more than walking them
                if done.all():
                    break
                continue
            if at is None:
                leaves, at = np.empty_like(node), np.arange(len(node))
            leaves[at[done]] = node[done]
            walking = np.flatnonzero(~done)
            node, offsets, at = node[walking], offsets[walking], at[walking]
        if at is None:
            return node
        leaves[at] = node
        return leaves

    def _sklearn_per_tree(self, X: np.ndarray, forest: np.ndarray) -> np.ndarray:
        out = np.zeros((self.n_trees, len(X)))
        for f in np.unique(forest):
            rows = forest == f
            out[:, rows] = sklearn_per_forest([self.forests[f]], [X[rows][:, :self.n_features[f]]])[0]
        return out


def sklearn_per_forest(forests: list, blocks: list[np.ndarray]) -> list[np.ndarray]:
    """``CompiledForests(forests).per_forest(blocks)`` through scikit-learn's own trees (slow)."""
    blocks = [np.ascontiguousarray(x, dtype=np.float32) for x in blocks]  # what a forest's predict hands them
    return [np.array([tree.predict(x, check_input=False) for tree in forest.estimators_])
            for forest, x in zip(forests, blocks)]


def heads_per_tree(heads, forests) -> np.ndarray:
    """The latency predictor's stage 2: every tree's log latency for every candidate (trees x
    candidates), all heads' trees together: each tree predicts its head's log ratio, added to the
    head's log reference. ``heads``: (features, log reference) pairs; ``forests``: the heads'
    fitted forests, or them compiled."""
    x = [x for x, _ in heads]
    trees = forests.per_forest(x) if isinstance(forests, CompiledForests) else sklearn_per_forest(forests, x)
    return np.concatenate([reference + tree for (_, reference), tree in zip(heads, trees)])


class CompiledKernelModels:
    """The predictor's stage 1 at once for all kernels: one model per (op, bits) and a fallback
    for the rest, each (a linear baseline, trees on the log ratio to it, the cross-validated RMS
    error of the log time); each distinct kernel is priced once."""

    def __init__(self, models: dict, fallback) -> None:
        keys = list(models)
        fitted = [models[key] for key in keys] + [fallback]
        self.index = np.full((len(OPS), 33), len(keys))  # by (op, bits); the fallback where none was fit
        for i, (op, bits) in enumerate(keys):
            self.index[op, bits] = i
        self.coefficients = np.array([np.append(baseline.coef_, baseline.intercept_) for baseline, _, _ in fitted])
        self.errors = np.array([error for _, _, error in fitted])
        self.forests = CompiledForests([trees for _, trees, _ in fitted])
        # A kernel's prediction depends on its row alone, and a search prices the same kernels
        # over and over (candidates differ in a few layers; a repair's moves in one), so each
        # row's (log ms, log variance) is kept once computed; the trees walk only new rows.
        self._known: dict[bytes, tuple[float, float]] = {}

    def log_ms(self, table: np.ndarray, roofline_terms, stage1_features) -> tuple[np.ndarray, np.ndarray]:
        """Each kernel's (``kernel_table`` row's) log latency alone, and that log's variance:
        ``log(baseline) + trees``, with the baseline's terms and the trees' features from the
        predictor's ``roofline_terms(table)`` and ``stage1_features(table, baseline_ms)``."""
        table = np.ascontiguousarray(table)
        keys = table.view(np.dtype((np.void, table.dtype.itemsize * table.shape[1]))).ravel().tolist()
        known = self._known
        new = {key: row for row, key in enumerate(keys) if key not in known}
        if new:
            if len(known) + len(new) > _KNOWN_KERNELS:
                known.clear()
            fresh = table[list(new.values())]
            model = self.index[fresh[:, 0], fresh[:, 1]]
            coefficients = self.coefficients[model]
            base = np.maximum(np.einsum("ij,ij->i", roofline_terms(fresh), coefficients[:, :-1])
                              + coefficients[:, -1], 1e-4)
            trees = self.forests.per_tree(stage1_features(fresh, base), model)
            log_ms = np.log(base) + self.forests.mean(trees)
            known.update(zip(new, zip(log_ms.tolist(), (self.errors[model] ** 2).tolist())))
        values = np.array([known[key] for key in keys]).reshape(len(keys), 2)
        return values[:, 0], values[:, 1]
