"""What stage 2 of the latency predictor knows of a whole candidate: features of its kernels
taken together, in named blocks, and the terms of the linear excess over their sum."""

from __future__ import annotations

import numpy as np
from sklearn.exceptions import NotFittedError

from .glue import _gated_elements, _glue_inputs
from .kernels import OPS, kernel_elements, kernel_weights

__all__ = ["BITS", "STREAMED_TERM", "candidate_features", "check_feature_names"]

BITS = (32, 16, 8, 4)  # the bit widths a kernel runs at
STREAMED_TERM = "streamed_float_mweights"  # the excess term ``predictor._excess_terms`` appends
_PRECISIONS = ("float", "int8", "int4")  # a kernel's precision class by its bits: >= 16, 8, fewer


def candidate_features(table: np.ndarray, owner: np.ndarray, ms: np.ndarray, alone: np.ndarray):
    """``table``: the kernels of every candidate (``kernel_table`` rows, concatenated), ``owner``
    the candidate of each, ``ms`` each kernel's own time, ``alone`` each candidate's time alone.
    Returns the features (one row a candidate), their names, the excess's parts, and the names of
    the excess's terms (those of ``predictor._excess_terms``, in its order)."""
    n = len(alone)

    def per_candidate(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n)

    op, bits = table[:, 0], table[:, 1]
    precision = np.select([bits >= 16, bits == 8], [0, 1], 2)
    shares = [per_candidate(ms * ((op == o) & (precision == p))) / alone for o in range(len(OPS)) for p in range(3)]
    _, _, cin, cout, k, _, h, w, out_h, out_w, groups = table.T.astype(np.float64)
    weights = kernel_weights(table) / 1e6  # millions
    weight_mb = weights * np.select([bits == 32, bits == 16, bits == 8], [4, 2, 1], 0.5)
    by_bits = [per_candidate(weight_mb * (bits == b)) for b in BITS]
    same_candidate = np.concatenate([[False], owner[1:] == owner[:-1]])
    changes = per_candidate(same_candidate & (bits != np.concatenate([[0], bits[:-1]])))
    counts = np.bincount(owner, minlength=n).astype(np.float64)
    activations = per_candidate(kernel_elements(table)[1] / 1e6)
    max_side = np.zeros(n)
    np.maximum.at(max_side, owner, np.maximum(h, w))
    glue_requantized, glue_plain = _glue_inputs(table, owner, n)
    gated = _gated_elements(table, owner, n)
    # Named blocks, whose names the fitted predictor keeps (``composition_features_``): a
    # predictor fit on other columns is refused, not read by position. A change here bumps
    # ``format_version``, so that cached predictors are refit. Mfloats reaching convs
    # through glue, requantized and not: ``_glue_inputs``; gated by squeeze-and-excitation:
    # ``_gated_elements``.
    blocks = [("log_time_alone", np.log(alone)), *((f"time_share_{OPS[o]}_{_PRECISIONS[p]}", shares[3 * o + p])
                                                   for o in range(len(OPS)) for p in range(3)),
              *((f"weight_mb_{b}bit", x) for b, x in zip(BITS, by_bits)),
              ("log_weight_mb", np.log(sum(by_bits) + 1e-6)), ("log_kernels", np.log(counts)),
              ("precision_change_share", changes / counts), ("log_activation_mfloats", np.log(activations)),
              ("log_largest_side", np.log(max_side)), ("glue_requantized_mfloats", glue_requantized),
              ("glue_plain_mfloats", glue_plain), ("gated_mfloats", gated)]
    names = tuple(name for name, _ in blocks)
    features = np.column_stack([column for _, column in blocks])
    # The excess: millions of weights by how often a kernel reuses each one (float weights by
    # output pixels: 1, 2-4, 5-16, more; fp16 counts as float, which ORT converts it to when
    # it loads the model), then int8 and int4 weights; precision changes, kernels, millions of
    # activations, millions of elements through glue (requantized and not) and gated, and a
    # constant (the session call). ``predictor._excess_terms`` adds the streaming term.
    is_float, pixels = bits >= 16, out_h * out_w
    reuse = np.digitize(pixels, [2, 5, 17])  # 0: one pixel, 1: 2-4, 2: 5-16, 3: more
    excess_blocks = [*((f"float_mweights_reused_{label}", per_candidate(weights * is_float * (reuse == r)))
                       for r, label in enumerate(("1", "2_4", "5_16", "over_16"))),
                     ("int8_mweights", per_candidate(weights * (bits == 8))),
                     ("int4_mweights", per_candidate(weights * (bits == 4))),
                     ("precision_changes", changes), ("kernels", counts), ("activation_mfloats", activations),
                     ("glue_requantized_mfloats", glue_requantized), ("glue_plain_mfloats", glue_plain),
                     ("gated_mfloats", gated), ("constant", np.ones(n))]
    excess_base = np.column_stack([column for _, column in excess_blocks])
    streamable = per_candidate(weights * is_float * (pixels > 1))
    excess_parts = (excess_base, streamable, 4 * per_candidate(weights * is_float))
    return features, names, excess_parts, tuple(name for name, _ in excess_blocks) + (STREAMED_TERM,)


def check_feature_names(fitted, built: tuple[str, ...], what: str = "features") -> None:
    """Refuse a predictor fit on other feature columns (or excess terms) than this version builds."""
    if tuple(fitted) != built:
        raise NotFittedError(f"this LatencyPredictor was fit on the {what} {list(fitted)}, and this version builds "
                             f"{list(built)}: refit it on its measurements (load_hardware_model refits a cache of "
                             "another format_version)")
