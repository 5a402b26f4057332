"""Kernels: the layers of a compressed model as the runtime executes them, and their features.

ONNX Runtime folds BatchNorm into the convolution before it and fuses the activation after it, so
one Conv2d/Linear of the model is one kernel (two for a low-rank layer). The attention between a
split attention's projections (``core.attention``: scores, softmax, weighted sum, over all heads)
is one kernel too, ``attention``, which has no weights and always runs in float. A Kernel is what
the latency predictor prices: shape, bits and grouping. Unstructured sparsity is not part of it,
because ORT's CPU kernels run a sparse weight dense (see ``targets.ort_cpu``). It comes two ways that must agree (tests hold them equal):

- ``kernels_of_candidate``: from the analysis and a Candidate alone, in microseconds (the search);
- ``kernels_of_model``: from a built model, by watching one forward pass.

``kernel_unit`` builds the smallest model that runs one kernel (Conv+BN+ReLU, or a Linear), which
profiling exports and times through the same path as a real candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.attention import OUTPUT_PROJECTION, SplitAttention, query_and_key_tokens
from ..core.modules import forward_with_hooks
from ..core.accounting import model_shapes
from ..core.analysis import ModelAnalysis
from ..core.candidate import Candidate
from ..techniques.factorize import LowRank
from ..techniques.quantizers import QuantizedLayer, QuantizedOutput

__all__ = [
    "FEATURE_NAMES",
    "KERNEL_FIELDS",
    "OPS",
    "Kernel",
    "kernel_elements",
    "kernel_features",
    "kernel_macs",
    "kernel_table",
    "kernel_unit",
    "candidate_table",
    "kernel_weights",
    "kernels_of_candidate",
    "roofline_terms",
    "stage1_features",
    "kernels_of_model",
]

OPS = ("conv", "dwconv", "linear", "attention")
KERNEL_FIELDS = ("op", "bits", "cin", "cout", "kernel", "stride", "h", "w", "out_h", "out_w", "groups")


@dataclass(frozen=True)
class Kernel:
    """One executed layer. ``h``/``w`` are the input's height and width (``w`` = 1 and ``h`` = rows
    for a linear); ``out_h``/``out_w`` the output's. An ``attention`` kernel reads ``cin`` as the
    head width, ``cout`` as the keys each query attends over, ``h`` as the queries and ``groups``
    as the heads."""

    op: str  # "conv" (any groups but depthwise), "dwconv", "linear" or "attention"
    bits: int
    cin: int
    cout: int
    kernel: int
    stride: int
    h: int
    w: int
    out_h: int
    out_w: int
    groups: int = 1
    layer: str = field(default="", compare=False)  # the model layer it comes from, for breakdowns

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Kernel op must be one of {OPS}, got {self.op=}")
        if self.bits not in (32, 16, 8, 4):
            raise ValueError(f"Kernel bits must be 32, 16, 8 or 4, got {self.bits=}")

    @property
    def macs(self) -> int:
        if self.op == "attention":  # scores and weighted sum, every head
            return 2 * self.groups * self.h * self.cout * self.cin
        return self.cout * (self.cin // self.groups) * self.kernel * self.kernel * self.out_h * self.out_w

    def to_dict(self) -> dict:
        return asdict(self)


_CONV, _DWCONV, _LINEAR, _ATTENTION = (OPS.index(op) for op in OPS)


def _op(kind: str, groups: int, cin: int, cout: int) -> int:
    """The index in OPS of the op a layer runs as."""
    if kind == "linear":
        return _LINEAR
    return _DWCONV if groups > 1 and groups == cin == cout else _CONV


def kernels_of_candidate(analysis: ModelAnalysis, candidate: Candidate) -> list[Kernel]:
    """The kernels of ``candidate`` applied to the analysed model, in the model's layer order."""
    return [Kernel(OPS[row[0]], *row[1:]) for row in _candidate_rows(analysis, candidate)]


def candidate_table(analysis: ModelAnalysis, candidate: Candidate) -> tuple[np.ndarray, list[str]]:
    """``kernel_table(kernels_of_candidate(...))`` and each row's layer, without the Kernel objects:
    the predictor's inner loop. Thousands of them alive at once in a batch kept the garbage
    collector walking them, which cost a third of the time."""
    rows = _candidate_rows(analysis, candidate)
    table = np.array([row[:-1] for row in rows], dtype=np.int64).reshape(len(rows), len(KERNEL_FIELDS))
    return table, [row[-1] for row in rows]


def _candidate_rows(analysis: ModelAnalysis, candidate: Candidate) -> list[tuple]:
    """Each kernel as a tuple: ``KERNEL_FIELDS`` (op as its index in OPS), then its layer."""
    shapes = model_shapes(analysis, candidate)
    after = {f"{a.name}.{OUTPUT_PROJECTION}": a for a in analysis.attention if a.split}  # runs before it, ends after
    rows = []
    for unit in shapes.units.values():
        if not shapes.alive(unit.name):
            continue
        rows += _layer_rows(unit, shapes.layers[unit.name])
        attention = after.get(unit.name)
        if attention is not None:
            heads = shapes.heads.get(attention.name, attention.heads)
            rows.append((_ATTENTION, 32, attention.head_dim, attention.source_tokens, 1, 1, attention.tokens, 1,
                         attention.tokens, 1, heads, attention.name))
    return rows


def _layer_rows(unit, s) -> list[tuple]:
    """The rows of one Conv2d/Linear layer as shaped ``s``: one, or two when factorized."""
    (h, w), (out_h, out_w) = unit.in_hw, unit.out_hw
    k, stride = s.kernel[0], unit.stride
    if s.rank is None:
        return [(_op(unit.kind, s.groups, s.in_channels, s.out_channels), s.bits, s.in_channels,
                 s.out_channels, k, stride, h, w, out_h, out_w, s.groups, unit.name)]
    op = _LINEAR if unit.kind == "linear" else _CONV
    return [(op, s.bits, s.in_channels, s.rank, k, stride, h, w, out_h, out_w, 1, unit.name),
            (op, s.bits, s.rank, s.out_channels, 1, 1, out_h, out_w, out_h, out_w, 1, unit.name)]


def kernels_of_model(model: nn.Module, example_input: torch.Tensor) -> list[Kernel]:
    """The kernels a built (possibly compressed) model runs, in the order it runs them."""
    kernels: list[Kernel] = []
    wrapped = {id(m.layer) for m in model.modules() if isinstance(m, QuantizedLayer)}  # run by their wrapper
    owner = {id(module): _layer_name(model, name) for name, module in model.named_modules()}

    def record(module, args, output):
        x = args[0]
        bits = module.bits if isinstance(module, QuantizedLayer) else 32
        layer = module.layer if isinstance(module, QuantizedLayer) else module
        name = owner[id(module)]
        if isinstance(layer, nn.Linear):
            rows = max(1, x.numel() // x.shape[-1] // len(example_input))  # tokens, wherever the batch is
            kernels.append(Kernel("linear", bits, layer.in_features, layer.out_features, 1, 1, rows, 1, rows, 1, 1,
                                  name))
        else:
            op = OPS[_op("conv", layer.groups, layer.in_channels, layer.out_channels)]
            kernels.append(Kernel(op, bits, layer.in_channels, layer.out_channels, layer.kernel_size[0],
                                  layer.stride[0], x.shape[-2], x.shape[-1], output.shape[-2], output.shape[-1],
                                  layer.groups, name))

    def record_attention(module, args, output):
        tokens, source = query_and_key_tokens([a.shape for a in args if isinstance(a, torch.Tensor)],
                                              module.batch_first)
        kernels.append(Kernel("attention", 32, module.head_dim, source, 1, 1, tokens, 1, tokens, 1,
                              module.num_heads, owner[id(module)]))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, QuantizedLayer) or (
        isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in wrapped)]
    handles += [m.register_forward_hook(record_attention) for m in model.modules() if isinstance(m, SplitAttention)]
    forward_with_hooks(model, example_input, handles)
    return kernels


def _layer_name(model: nn.Module, module_name: str) -> str:
    """The analysis' name of the layer a module runs for: the path without the segments our
    wrappers add (a quantizer's inner module, a factorized layer's two halves)."""
    kept, module = [], model
    for part in module_name.split(".") if module_name else []:
        if not isinstance(module, (QuantizedLayer, QuantizedOutput, LowRank)):
            kept.append(part)
        module = module.get_submodule(part)
    return ".".join(kept)


FEATURE_NAMES = ("log_cin", "log_cout", "kernel", "stride", "log_h", "log_out_pixels", "log_macs",
                 "log_in_elems", "log_out_elems", "log_weights", "cin_mod8", "cout_mod8", "cin_mod16",
                 "cout_mod16", "log_groups")


def kernel_table(kernels: list[Kernel]) -> np.ndarray:
    """Kernels as an integer matrix, one column per field of ``Kernel`` (op as its index in OPS)."""
    return np.array([(OPS.index(k.op), k.bits, k.cin, k.cout, k.kernel, k.stride, k.h, k.w, k.out_h, k.out_w,
                      k.groups) for k in kernels], dtype=np.int64).reshape(len(kernels), 11)


def kernel_weights(table: np.ndarray) -> np.ndarray:
    """The weight count of each row of ``kernel_table`` (float64); none for attention."""
    _, _, cin, cout, k, _, _, _, _, _, groups = table.T.astype(np.float64)
    return np.where(table[:, 0] == _ATTENTION, 0.0, cout * np.floor(cin / groups) * k * k)


def kernel_macs(table: np.ndarray) -> np.ndarray:
    """The MACs of each row of ``kernel_table`` (float64), as ``Kernel.macs`` counts them."""
    _, _, cin, cout, _, _, h, _, out_h, out_w, groups = table.T.astype(np.float64)
    return np.where(table[:, 0] == _ATTENTION, 2 * groups * h * cout * cin, kernel_weights(table) * out_h * out_w)


def kernel_elements(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The elements each row of ``kernel_table`` reads and writes (float64): an attention reads its
    queries, keys and values and writes one value per query, head and head width."""
    _, _, cin, cout, _, _, h, w, out_h, out_w, groups = table.T.astype(np.float64)
    attention = table[:, 0] == _ATTENTION
    reads = np.where(attention, groups * cin * (h + 2 * cout), cin * h * w)
    writes = np.where(attention, groups * cin * h, cout * out_h * out_w)
    return reads, writes


def kernel_features(table: np.ndarray) -> np.ndarray:
    """FEATURE_NAMES for each row of ``kernel_table``. Channel counts modulo 8 and 16 are there
    because the runtime's vectorised kernels run unaligned channel counts markedly slower."""
    _, _, cin, cout, k, stride, h, w, out_h, out_w, groups = table.T.astype(np.float64)
    out_pixels = out_h * out_w
    weights = kernel_weights(table)
    reads, writes = kernel_elements(table)
    ci, co = table[:, 2], table[:, 3]
    return np.column_stack([
        np.log(cin), np.log(cout), k, stride, np.log(h), np.log(out_pixels), np.log(kernel_macs(table)),
        np.log(reads), np.log(writes), np.log(np.maximum(weights, 1)), ci % 8, co % 8, ci % 16, co % 16,
        np.log(groups),
    ])


def roofline_terms(table: np.ndarray) -> np.ndarray:
    """Per kernel: a constant (the call), MACs, input and output elements, weights (millions);
    then the costs of the runtime's slower paths: per group and per group-pixel (a grouped or
    depthwise conv with unaligned channels runs group by group), and MACs with channels that are
    not multiples of 16 (no blocked NCHWc layout on AVX-512)."""
    _, _, cin, cout, k, _, h, w, out_h, out_w, groups = table.T.astype(np.float64)
    weights = kernel_weights(table)
    macs = kernel_macs(table) / 1e6
    reads, writes = kernel_elements(table)
    unaligned = (table[:, 2] % 16 != 0) | (table[:, 3] % 16 != 0)
    return np.column_stack([np.ones(len(table)), macs, reads / 1e6, writes / 1e6, weights / 1e6,
                            groups / 1e3, groups * out_h * out_w / 1e6, macs * unaligned])


def baseline_ms(baseline, table: np.ndarray) -> np.ndarray:
    """Each kernel's latency by a roofline ``baseline`` fit on ``roofline_terms`` (never below 0.1 us)."""
    return np.maximum(baseline.predict(roofline_terms(table)), 1e-4)


def stage1_features(table: np.ndarray, base: np.ndarray, shape_features=kernel_features) -> np.ndarray:
    """The target's shape features (``Target.kernel_features``), plus op and bits (they matter to
    the pooled fallback), plus the baseline."""
    return np.column_stack([shape_features(table), table[:, 0], table[:, 1], np.log(base)])


class _ConvUnit(nn.Module):
    def __init__(self, k: Kernel) -> None:
        super().__init__()
        self.conv = nn.Conv2d(k.cin, k.cout, k.kernel, k.stride, k.kernel // 2, groups=k.groups, bias=False)
        self.bn = nn.BatchNorm2d(k.cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class _LinearUnit(nn.Module):
    def __init__(self, k: Kernel) -> None:
        super().__init__()
        self.fc = nn.Linear(k.cin, k.cout)

    def forward(self, x):
        return self.fc(x)


class _AttentionUnit(nn.Module):
    """Scores, softmax and weighted sum over ``groups`` heads of ``cin`` features: the first ``h``
    tokens of the input are the queries, the first ``cout`` its keys and values."""

    def __init__(self, k: Kernel) -> None:
        super().__init__()
        self.heads, self.head_dim, self.queries, self.keys = k.groups, k.cin, k.h, k.cout

    def forward(self, x):
        n = x.shape[0]

        def by_head(rows):
            return x[:, :rows].reshape(n, rows, self.heads, self.head_dim).transpose(1, 2)

        q, kv = by_head(self.queries), by_head(self.keys)
        scores = torch.matmul(q * (1.0 / self.head_dim ** 0.5), kv.transpose(-2, -1))
        out = torch.matmul(torch.softmax(scores, dim=-1), kv)
        return out.transpose(1, 2).reshape(n, self.queries, self.heads * self.head_dim)


def kernel_unit(kernel: Kernel) -> tuple[nn.Module, torch.Tensor]:
    """The smallest float model that runs ``kernel`` (bits are applied by a Candidate), and an input."""
    if kernel.op == "attention":
        tokens = max(kernel.h, kernel.cout)
        return _AttentionUnit(kernel).eval(), torch.randn(1, tokens, kernel.groups * kernel.cin)
    if kernel.op == "linear":  # over tokens it runs as MatMul, quantized unlike a Gemm (hardware.matmul_quant)
        rows = (1, kernel.h) if kernel.h > 1 else (1,)
        return _LinearUnit(kernel).eval(), torch.randn(*rows, kernel.cin)
    return _ConvUnit(kernel).eval(), torch.randn(1, kernel.cin, kernel.h, kernel.w)
