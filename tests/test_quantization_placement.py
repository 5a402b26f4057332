"""The simulation puts its quantizers where ORT puts Q/DQ pairs, so both compute the same model."""

import numpy as np
import pytest
import torch
from torch import nn

from autocompress import Candidate, analyze, apply_candidate, export_onnx, run_onnx
from autocompress.techniques.quantizers import QuantizedLayer, QuantizedOutput, bias_rounding
from autocompress.train.training import predict


def _int8(model, example):
    analysis = analyze(model, example)
    return apply_candidate(model, Candidate(bits={u.name: 8 for u in analysis.layers}), analysis, example)


def test_output_quantizers_sit_after_the_batchnorm_ort_folds(tiny):
    built = _int8(tiny, torch.randn(1, 3, 16, 16))
    assert isinstance(built.stem[1], QuantizedOutput)
    assert built.stem[1]._folded_into is built.stem[0]  # the folded bias is rounded with the conv's scales
    assert built.stem[0].bias_folded_downstream
    assert isinstance(built.dw[1], QuantizedOutput) and isinstance(built.dw[4], QuantizedOutput)
    assert isinstance(built.head, QuantizedOutput)  # Gemm output: quantized by ORT too


def test_a_shared_int_input_is_quantized_for_every_reader(tiny):
    built = _int8(tiny, torch.randn(1, 3, 16, 16))
    # block1's and block2's inputs feed their conv1 and their residual add: ORT quantizes each
    # once, for both readers, so the simulation quantizes them where they are produced.
    assert isinstance(built.stem[2], QuantizedOutput) and isinstance(built.down[2], QuantizedOutput)


def test_bias_rounding_matches_int32_quantization():
    bias = torch.tensor([0.1234, -0.5, 0.0])
    step = torch.tensor([0.01, 0.3, 0.5])
    rounded = bias + bias_rounding(bias, step)
    assert torch.allclose(rounded, torch.tensor([0.12, -0.6, 0.0]), atol=1e-6)
    assert bias_rounding(bias, torch.zeros(3)).abs().max() == 0  # a zero scale leaves the bias alone


@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_tiny_model_matches_onnxruntime_to_float_precision(tiny, tmp_path, with_bias):
    torch.manual_seed(0)
    if with_bias:
        tiny.head = nn.Linear(48, 10)
        tiny.stem[0].bias = nn.Parameter(torch.randn(16) * 0.1)
    for m in tiny.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    example = torch.randn(1, 3, 16, 16)
    built = _int8(tiny, example)
    calibration = [torch.randn(32, 3, 16, 16) for _ in range(4)]
    result = export_onnx(built, example, tmp_path / "tiny.onnx", calibration=calibration)
    inputs = torch.randn(64, 3, 16, 16)
    torch_logits, ort_logits = predict(built, inputs).numpy(), run_onnx(result.path, inputs)
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).mean() == 1.0
    assert np.abs(torch_logits - ort_logits).max() <= 0.02 * torch_logits.std()
    assert sum(isinstance(m, QuantizedLayer) for m in built.modules()) == 9
