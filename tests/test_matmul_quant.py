"""Integer MatMuls as ONNX Runtime runs transformers: dynamic int8 and weight-only int4, simulated
exactly, exported as ORT's kernels, run one item at a time."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocompress import Candidate, analyze, apply_candidate, export_and_compare
from autocompress.hardware.kernels import Kernel, kernel_unit
from autocompress.techniques.quantizers import QuantizedLayer, int4_weight_blocks
from autocompress.zoo import small_vit


def _vit():
    torch.manual_seed(0)
    model = small_vit(depth=2, width=48, heads=3, mlp_dim=96).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return model


class _TokensFirst(nn.Module):
    """An encoder layer fed (tokens, batch, features), as nn.MultiheadAttention's default expects."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, 8)
        self.encoder = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)
        return self.head(self.encoder(tokens).mean(0))


def _encoder_only(analysis, bits):
    return Candidate(bits={u.name: bits for u in analysis.layers if u.name.startswith("encoder")})


@pytest.mark.parametrize("bits, op", [(8, "DynamicQuantizeLinear"), (4, "MatMulNBits")])
def test_int_matmuls_export_as_ort_runs_transformers_and_agree_with_the_simulation(bits, op, tmp_path):
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    inputs = torch.randn(48, 3, 32, 32)
    analysis = analyze(model, x)
    built = apply_candidate(model, _encoder_only(analysis, bits), analysis, x)
    result, torch_logits, ort_logits = export_and_compare(built, x, tmp_path / "vit.onnx", inputs,
                                                          calibration=[inputs[:8]])
    graph = onnx.load(str(result.path))
    ops = [n.op_type for n in graph.graph.node]
    assert op in ops and "QuantizeLinear" not in ops  # no static Q/DQ: the encoder's tensors stay float
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).all()
    # int4 weights are the simulation's own integers: equal to float rounding. int8 inputs are
    # quantized on both sides from LayerNorm outputs that differ in the last bit, which now and
    # then rounds one value to the next step.
    assert np.median(np.abs(torch_logits - ort_logits)) <= 1e-5 * torch_logits.std()


def test_int4_blocks_cover_a_width_that_is_not_a_multiple_of_the_block():
    weight = torch.randn(5, 40)
    q, scale = int4_weight_blocks(weight, (-7, 7))
    assert q.shape == (5, 2, 32) and (q[:, 1, 8:] == 0).all()  # 8 real features in the last block
    assert q.abs().amax(dim=2).eq(7).all()  # each block's largest weight maps to the range's end
    rebuilt = (q * scale).reshape(5, -1)[:, :40]
    assert (rebuilt - weight).abs().max() <= scale.max() / 2 + 1e-6


def test_dynamic_int8_takes_each_items_own_range_whatever_the_batch():
    model, x = _TokensFirst().eval(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    built = apply_candidate(model, _encoder_only(analysis, 8), analysis, x)
    dims = {name: m.item_dim for name, m in built.named_modules() if isinstance(m, QuantizedLayer)}
    # The FFN reads tokens first; the split attention's projections run batch first.
    assert dims["encoder.linear1"] == dims["encoder.linear2"] == 1 and dims["encoder.self_attn.q_proj"] == 0
    inputs = torch.randn(6, 3, 32, 32)
    inputs[0] *= 50  # one item with a far wider range must not coarsen the others
    with torch.no_grad():
        together = built(inputs)
        alone = torch.cat([built(inputs[i:i + 1]) for i in range(len(inputs))])
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_linear_kernel_over_tokens_is_profiled_as_a_matmul_and_a_single_row_as_a_gemm(tmp_path):
    from autocompress.hardware.onnx_export import export_onnx

    ops = {}
    for rows in (1, 17):
        kernel = Kernel("linear", 8, 48, 96, 1, 1, rows, 1, rows, 1)
        unit, example = kernel_unit(kernel)
        analysis = analyze(unit, example)
        assert analysis.layers[0].in_hw == (rows, 1)
        built = apply_candidate(unit, Candidate(bits={analysis.layers[0].name: 8}), analysis, example)
        result = export_onnx(built, example, tmp_path / f"{rows}.onnx", calibration=[example])
        ops[rows] = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "Gemm" in ops[1] and "DynamicQuantizeLinear" not in ops[1]
    assert "DynamicQuantizeLinear" in ops[17] and "Gemm" not in ops[17]


class _TokensIntoGemm(nn.Module):
    """A MatMul over tokens whose output, pooled, feeds a Gemm: int layers of both kinds in a chain."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.mix(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("mix_bits, head_bits", [(4, 4), (4, 8), (8, 4), (8, 8)])
def test_static_and_matmul_quantization_mix_in_one_export(mix_bits, head_bits, tmp_path):
    torch.manual_seed(0)
    model, x = _TokensIntoGemm().eval(), torch.randn(1, 3, 32, 32)
    inputs = torch.randn(32, 3, 32, 32)
    analysis = analyze(model, x)
    candidate = Candidate(bits={"embed": 8, "mix": mix_bits, "head": head_bits})
    built = apply_candidate(model, candidate, analysis, x)
    _, torch_logits, ort_logits = export_and_compare(built, x, tmp_path / "mixed.onnx", inputs,
                                                     calibration=[inputs[:8]])
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).mean() >= 0.95
    assert np.median(np.abs(torch_logits - ort_logits)) <= 0.02 * torch_logits.std()


def test_a_tokens_first_encoders_linears_are_counted_over_its_tokens():
    from autocompress.core.accounting import footprint_of_candidate, footprint_of_model
    from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model

    model, x = _TokensFirst().eval(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    assert analysis.layer("encoder.linear1").in_hw == (16, 1)  # 16 tokens, not the batch of 1
    candidate = Candidate(bits={"encoder.linear1": 8})
    built = apply_candidate(model, candidate, analysis, x)
    assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, x)
    assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, x)


def test_a_bias_free_linear_on_vectors_is_a_matmul_on_both_sides(tmp_path):
    # A factorized classifier's first factor has no bias: the exporter writes MatMul, not Gemm,
    # so it is quantized dynamically there and must be simulated so.
    torch.manual_seed(0)
    model, x = _TokensIntoGemm().eval(), torch.randn(1, 3, 32, 32)
    inputs = torch.randn(32, 3, 32, 32)
    analysis = analyze(model, x)
    built = apply_candidate(model, Candidate(rank={"head": 0.5}, bits={"head": 8}), analysis, x)
    result, torch_logits, ort_logits = export_and_compare(built, x, tmp_path / "head.onnx", inputs,
                                                          calibration=[inputs[:8]])
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert np.abs(torch_logits - ort_logits).max() <= 1e-4 * torch_logits.std()
