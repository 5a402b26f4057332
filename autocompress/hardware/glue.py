"""What runs between the kernels of a network, as the runtime executes it: which tensors are
re-quantized or pooled on the way from one kernel to the next (the predictor's glue terms)."""

from __future__ import annotations

import numpy as np

from .kernels import OPS

__all__ = ["_gated_elements", "_glue_inputs"]


def _glue_inputs(table: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, millions of elements that reach a conv through glue ops (a max pool, a
    concatenation, a channel split) rather than straight from an earlier kernel: first those the
    runtime requantizes (an int kernel reads them and no int8 kernel produced them), then the rest.

    The runtime runs a pool on a tensor it has to quantize for an int reader with a slow generic
    uint8 loop: profiled in ResNet-18 candidates at 64x64, the stem's max pool took 120-460 us when
    a reader of its output was int8 or int4 and the stem float or int4 (a float conv either way),
    and 3-25 us in float (blocked NCHWc layout). After an int8 stem the pool runs on its uint8 output
    in the fast NHWC kernel (11 us): counting that case as slow over-predicted one candidate by 43%.
    But only when an int8 kernel reads it: with only int4 (and float) readers after an int8 stem,
    the pool is back on the slow loop (profiled at 64x64: 290 us; any int8 reader, 9 us). Counting
    that case as fast under-predicted two seed-13 validation candidates by 46% and 24%.

    A tensor is known by its owner, channels, height and width; a conv input that no earlier
    kernel of the candidate produced came through glue. Its producer is taken to be the nearest
    earlier kernel with as many output channels and an output at least as large. Global pools (1x1
    outputs) are cheap and left out; so is the network's input."""
    op, bits, cin, cout, _, _, h, w, out_h, out_w, _ = table.T

    def key(channels, height, width):
        return (owner.astype(np.int64) << 40) | (channels << 24) | (height << 12) | width

    produced, consumed = key(cout, out_h, out_w), key(cin, h, w)
    known, first_row = np.unique(produced, return_index=True)
    at = np.minimum(np.searchsorted(known, consumed), len(known) - 1)
    fed_by_kernel = (known[at] == consumed) & (first_row[at] < np.arange(len(table)))
    network_input = np.concatenate([[True], owner[1:] != owner[:-1]])
    glue = ~fed_by_kernel & ~network_input & (op < OPS.index("linear")) & (h * w > 1)  # convs alone
    int8_produced = np.zeros(len(table), dtype=bool)
    first_of_owner = np.searchsorted(owner, owner)  # a candidate's rows are contiguous, in order
    for row in np.flatnonzero(glue):  # a few rows per candidate: ResNet's pool, a concatenation
        earlier = np.arange(row - 1, first_of_owner[row] - 1, -1)  # its own candidate's only
        source = earlier[(cout[earlier] == cin[row]) & (out_h[earlier] >= h[row])][:1]
        int8_produced[row] = len(source) == 1 and bits[source[0]] == 8
    tensors, reader_of = np.unique(consumed[glue], return_inverse=True)
    int_read, int8_read = np.zeros(len(tensors), dtype=bool), np.zeros(len(tensors), dtype=bool)
    np.logical_or.at(int_read, reader_of, bits[glue] <= 8)
    np.logical_or.at(int8_read, reader_of, bits[glue] == 8)
    first_reader = np.unique(reader_of, return_index=True)[1]
    requantized = int_read & ~(int8_produced[glue][first_reader] & int8_read)
    elements = (cin * h * w)[glue][first_reader] / 1e6
    tensor_owner = owner[glue][first_reader]
    return (np.bincount(tensor_owner, weights=elements * requantized, minlength=n),
            np.bincount(tensor_owner, weights=elements * ~requantized, minlength=n))


def _gated_elements(table: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per candidate, millions of elements that a squeeze-and-excitation gate multiplies.

    Such a block pools a conv's output to 1x1, runs two small convs on it and scales every element
    of the output by the result: a global pool and a multiply over the whole tensor (in
    EfficientNet, with a SiLU, which ONNX Runtime does not fuse into the conv, on each side), none
    of which a kernel timed alone pays. Without this term, stage 2 read MobileNet-V2 (no gates)
    and EfficientNet-B0 (gates in every block) alike: cross-validated over the AVX2 profile, it
    over-predicted MobileNet-V2 at 64x64 by 1.6% (median) and under-predicted EfficientNet-B0 by
    1.6%; with it, 0.1% and 0.0%, and 90.5% of candidates within 10% instead of 87.7%.

    Seen in the kernels alone: a conv whose output a conv on a 1x1 map reads next (the gate's
    first conv, after the pool). A classifier is a linear layer and is not counted; a network
    whose classifier is a 1x1 conv after a global pool counts its last feature map once."""
    op, hw = table[:, 0], table[:, 6] * table[:, 7]
    same_candidate = owner[1:] == owner[:-1]
    gate = same_candidate & (hw[:-1] > 1) & (hw[1:] == 1) & (op[1:] < OPS.index("linear"))  # into a conv
    elements = (table[:-1, 3] * table[:-1, 8] * table[:-1, 9] * gate).astype(np.float64) / 1e6
    return np.bincount(owner[:-1], weights=elements, minlength=n)
