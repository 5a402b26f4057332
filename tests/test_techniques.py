import numpy as np
import pytest
import torch
from torch import nn

from autocompress import Candidate, analyze, apply_candidate, resolve_model
from autocompress.techniques import QuantizedLayer, factorize, shrink_kernel
from autocompress.techniques.quantizers import (
    activation_qparams,
    calibrate,
    fake_quantize_weight,
    weight_qrange,
)
from autocompress.hardware.targets.ort_cpu import ORT_CPU, int8_weights_saturate, machine_info


@pytest.mark.parametrize("layer", [
    nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(24, 8, 1, bias=False), nn.Conv2d(3, 64, 7, stride=2, padding=3),
    nn.Linear(40, 30), nn.Linear(30, 50, bias=False),
])
def test_full_rank_factorization_is_the_identity(layer):
    torch.manual_seed(0)
    rank = min(layer.weight.shape[0], layer.weight[0].numel())
    x = torch.randn(4, layer.in_channels, 12, 12) if isinstance(layer, nn.Conv2d) else torch.randn(4, layer.in_features)
    low_rank = factorize(layer, rank)
    assert (low_rank(x) - layer(x)).abs().max().item() <= 1e-4


def test_truncated_factorization_uses_the_best_rank_r_approximation():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64, bias=False)
    low_rank = factorize(layer, 16)
    product = low_rank[1].weight @ low_rank[0].weight
    singular = torch.linalg.svdvals(layer.weight.detach())
    error = torch.linalg.matrix_norm(product - layer.weight.detach(), ord=2)
    assert error.item() == pytest.approx(singular[16].item(), rel=1e-4)  # Eckart-Young


def test_all_32_bit_candidate_is_the_identity(tiny):
    example = torch.randn(2, 3, 16, 16)
    analysis = analyze(tiny, example)
    candidate = Candidate(bits={u.name: 32 for u in analysis.layers}, rank={u.name: 1.0 for u in analysis.layers})
    built = apply_candidate(tiny, candidate, analysis, example)
    assert not any(isinstance(m, QuantizedLayer) for m in built.modules())
    assert (built(example) - tiny(example)).abs().max().item() <= 1e-4


def test_int8_weights_have_7_bits_where_int8_kernels_saturate():
    # The rule follows the target machine (a hardware model's record), not the host.
    here = ORT_CPU.quantization_rules(None)
    assert here.weight_range(8) == ((-64, 64) if int8_weights_saturate(machine_info()) else (-127, 127))
    avx2_only = {"machine": "x86_64", "isa": {"avx2": True, "avx512_vnni": False, "avx_vnni": False}}
    saturating = ORT_CPU.quantization_rules(avx2_only)
    assert weight_qrange(8, saturating) == (-64, 64) and weight_qrange(4, saturating) == (-7, 7)
    levels = fake_quantize_weight(torch.tensor([[1.0, -0.5, 0.25]]), 8, saturating.weight_range(8)) / (1.0 / 64)
    assert torch.allclose(levels, torch.tensor([[64.0, -32.0, 16.0]]))
    with_vnni = {"machine": "x86_64", "isa": {"avx2": True, "avx512_vnni": True}}
    assert weight_qrange(8, ORT_CPU.quantization_rules(with_vnni)) == (-127, 127)
    assert weight_qrange(8, ORT_CPU.quantization_rules({"machine": "aarch64", "isa": {}})) == (-127, 127)


def test_int8_weights_follow_ort_symmetric_per_channel_rule():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3)
    q = fake_quantize_weight(weight, 8)
    _, qmax = weight_qrange(8)  # 127, or 64 where ORT's int8 kernels saturate
    scale = weight.abs().amax(dim=(1, 2, 3)) / qmax
    levels = q / scale.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max().item() <= qmax + 1e-3
    assert (q - weight).abs().max().item() <= scale.max().item() / 2 + 1e-6
    q4 = fake_quantize_weight(weight, 4)
    levels4 = q4 / (weight.abs().amax(dim=(1, 2, 3)) / 7.0).view(-1, 1, 1, 1)
    assert torch.allclose(levels4, levels4.round(), atol=1e-3) and levels4.abs().max().item() <= 7.0 + 1e-3
    assert torch.equal(fake_quantize_weight(weight, 16), weight.half().float())


def test_weight_rounding_passes_gradients_straight_through():
    weight = torch.randn(4, 4, requires_grad=True)
    fake_quantize_weight(weight, 4).sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_activation_qparams_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for low, high in ((-1.3, 4.2), (0.0, 6.0), (0.5, 2.0), (-3.0, -1.0)):
        scale, zero = activation_qparams(torch.tensor(low), torch.tensor(high))
        ort_zero, ort_scale = compute_scale_zp(np.array(low, np.float32), np.array(high, np.float32), np.uint8(0),
                                               np.uint8(255))
        assert scale.item() == pytest.approx(float(ort_scale), rel=1e-6)
        assert zero.item() == float(ort_zero)


def test_calibration_records_float_ranges_and_quantized_eval_uses_them():
    torch.manual_seed(0)
    layer = QuantizedLayer(nn.Linear(8, 4), 8)
    batches = [torch.randn(16, 8) * 3 for _ in range(3)]
    calibrate(layer, batches)
    low = min(b.min() for b in batches)
    assert layer.input_quantizer.low.item() == pytest.approx(low.item())
    x = torch.randn(5, 8)
    assert (layer(x) - layer.layer(x)).abs().max().item() < 0.1


def test_kernel_shrink_keeps_the_centre_and_the_output_size():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 5, padding=2)
    centre = conv.weight.detach()[:, :, 1:4, 1:4].clone()
    x = torch.randn(1, 4, 9, 9)
    shrink_kernel(conv, 3)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    assert torch.equal(conv.weight.detach(), centre)
    assert conv(x).shape == (1, 6, 9, 9)


def test_skipped_blocks_and_kernels_change_the_structure():
    model = resolve_model("mobilenet_v2")
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    block = analysis.blocks[0].name
    kernel = analysis.kernels[0]
    candidate = Candidate(skip={block: True}, kernel={kernel.layer: kernel.options[-1]})
    built = apply_candidate(model, candidate, analysis, example)
    assert sum(p.numel() for p in built.get_submodule(block).parameters()) == 0
    assert built.get_submodule(kernel.layer).kernel_size == (kernel.options[-1],) * 2
    assert built(example).shape == (1, 10)


def test_transformer_with_replaced_linears_runs_in_eval_without_grad():
    model = resolve_model("autocompress.zoo:transformer_classifier")
    example = torch.randn(2, 3, 32, 32)
    analysis = analyze(model, example[:1])
    names = [u.name for u in analysis.layers if "linear" in u.name]
    candidate = Candidate(bits={names[0]: 8}, rank={names[1]: 0.5})
    built = apply_candidate(model, candidate, analysis, example[:1])
    with torch.no_grad():  # the fused encoder kernel would read linear1.weight and crash
        assert built(example).shape == (2, 10)
