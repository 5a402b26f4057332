"""Attention split into layers, and whole heads cut: same function, exact accounting, ONNX agrees."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from autocompress import Candidate, Space, analyze, apply_candidate, export_and_compare
from autocompress.core.accounting import footprint_of_candidate, footprint_of_model
from autocompress.core.attention import SplitAttention
from autocompress.core.library_attention import is_hf_attention, is_timm_attention, split_attention
from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model
from autocompress.errors import ModelResolutionError
from autocompress.train.models import resolve_model
from autocompress.zoo import small_vit, transformer_classifier


def _vit(heads=3, depth=2, width=48):
    torch.manual_seed(0)
    model = small_vit(depth=depth, width=width, heads=heads, mlp_dim=2 * width).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero: all logits 0
    return model


def _deit():
    torch.manual_seed(0)
    return resolve_model("timm:deit_tiny_patch16_224,img_size=32,patch_size=4,depth=2,embed_dim=48")


def _hf_vit():
    torch.manual_seed(0)
    return resolve_model("hf:vit,patch_size=4,hidden_size=48,num_hidden_layers=2,num_attention_heads=3,"
                         "intermediate_size=96", image_size=32)


MODELS = [_vit, transformer_classifier, _deit, _hf_vit]


@pytest.mark.parametrize("make", MODELS)
def test_split_attention_computes_what_multihead_attention_does(make):
    model = make().eval()
    x = torch.randn(4, 3, 32, 32)
    split = copy.deepcopy(model)
    assert split_attention(split) == []
    assert not any(isinstance(m, nn.MultiheadAttention) or is_hf_attention(m) or is_timm_attention(m)
                   for m in split.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), split(x), atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_split_attention_takes_the_masks_and_shapes_multihead_attention_takes(batch_first):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=batch_first).eval()
    split = SplitAttention.from_multihead(mha).eval()
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 8), torch.randn(2, 7, 12)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    blocked = torch.rand(5, 7) > 0.7
    blocked[:, 0] = False
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 6] = True
    for kwargs in ({}, {"attn_mask": blocked, "key_padding_mask": padding}, {"average_attn_weights": False},
                   {"attn_mask": torch.randn(8, 5, 7)}, {"need_weights": False}):
        expected, got = mha(q, k, v, **kwargs), split(q, k, v, **kwargs)
        assert torch.allclose(expected[0], got[0], atol=1e-5), kwargs
        assert (expected[1] is None) == (got[1] is None) and (got[1] is None or torch.allclose(expected[1], got[1]))
    unbatched = (q[:, 0], k[:, 0], v[:, 0]) if not batch_first else (q[0], k[0], v[0])
    assert torch.allclose(mha(*unbatched)[0], split(*unbatched)[0], atol=1e-5)


def test_a_vit_offers_heads_ffn_widths_skips_bits_and_ranks_for_every_block():
    model, x = _vit(depth=3), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    space = Space(analysis)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    names = {v.name for v in space.variables}
    for block in blocks:
        assert f"heads/{block}.self_attention" in names
        assert f"prune/{block}.mlp.0" in names  # the FFN's hidden width
        assert f"skip/{block}" in names
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert {f"bits/{block}.self_attention.{projection}", f"rank/{block}.self_attention.{projection}"} <= names
    attention = analysis.attention[0]
    assert (attention.heads, attention.head_dim, attention.tokens, attention.split) == (3, 16, 65, True)
    assert sorted(attention.head_order) == [0, 1, 2]


def test_cutting_heads_removes_the_least_important_first():
    model, x = _vit(heads=4), torch.randn(8, 3, 32, 32)
    # Silence head 2 of the first block: it adds nothing to the output, so it ranks last and is cut
    # first, and cutting it changes nothing.
    attention = model.encoder.layers[0].self_attention
    with torch.no_grad():
        attention.out_proj.weight[:, 2 * 12:3 * 12] = 0
    analysis = analyze(model, x[:1])
    name = "encoder.layers.encoder_layer_0.self_attention"
    assert analysis.attention[0].head_order[-1] == 2
    built = apply_candidate(model, Candidate(heads={name: 1}), analysis, x[:1])
    cut = built.get_submodule(name)
    assert (cut.num_heads, cut.heads_kept, cut.q_proj.out_features, cut.out_proj.in_features) == (3, (0, 1, 3), 36, 36)
    with torch.no_grad():
        assert torch.allclose(built(x), model(x), atol=1e-5)
        neutral = apply_candidate(model, Candidate(heads={name: 0}), analysis, x[:1])
        assert torch.allclose(neutral(x), model(x), atol=1e-5)
        assert not torch.allclose(apply_candidate(model, Candidate(heads={name: 2}), analysis, x[:1])(x), model(x),
                                  atol=1e-3)


@pytest.mark.parametrize("make", MODELS)
def test_accounting_and_kernels_agree_on_random_candidates_with_heads_cut(make):
    model, x = make(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    space = Space(analysis)
    rng = random.Random(5)
    cut = 0
    for _ in range(6):
        candidate = space.sample(rng)
        built = apply_candidate(model, candidate, analysis, x)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, x)
        assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, x)
        cut += sum(candidate.heads.values())
    assert cut > 0


@pytest.mark.parametrize("make, bits", [(_vit, 32), (_vit, 16), (_vit, 8), (_vit, 4), (_deit, 32), (_deit, 8), (_deit, 4),
                                        (_hf_vit, 32), (_hf_vit, 8), (_hf_vit, 4)])
def test_a_vit_with_heads_cut_exports_and_onnx_runtime_agrees(make, bits, tmp_path):
    model, x = make(), torch.randn(1, 3, 32, 32)
    inputs = torch.randn(96, 3, 32, 32)
    analysis = analyze(model, x)
    candidate = Candidate(heads={a.name: 1 + i for i, a in enumerate(analysis.attention)},
                          prune={g.id: 0.5 for g in analysis.prunable_groups},
                          bits={u.name: bits for u in analysis.layers})
    built = apply_candidate(model, candidate, analysis, x)
    _, torch_logits, ort_logits = export_and_compare(built, x, tmp_path / "vit.onnx", inputs, calibration=[inputs[:32]])
    spread = torch_logits.std()
    assert np.quantile(np.abs(torch_logits - ort_logits), 0.99) <= (1e-4 if bits > 8 else 0.1) * spread
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).mean() >= (1.0 if bits > 8 else 0.95)


class _KeyValueBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.attention = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.attention(tokens, tokens, tokens)[0].mean(1))


def test_an_attention_that_cannot_be_rewritten_is_left_whole_with_a_note():
    model, x = _KeyValueBias().eval(), torch.randn(1, 3, 32, 32)
    analysis = analyze(model, x)
    assert not analysis.attention[0].split and "add_bias_kv" in analysis.attention[0].note
    assert any("attention: attention left whole" in n for n in analysis.notes)
    assert not any(v.kind == "heads" for v in Space(analysis).variables)
    candidate = Space(analysis).sample(random.Random(0))
    built = apply_candidate(model, candidate, analysis, x)
    assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, x)


@pytest.mark.parametrize("spec, words", [
    ("timm:no_such_vit", "timm has no model 'no_such_vit'"),
    ("timm:deit_tiny_patch16_224,img_size", "'img_size' is not key=value"),
    ("timm:deit_tiny_patch16_224,colour=3", "timm could not build it"),
    ("hf:no_such_model", "transformers has no model type 'no_such_model'"),
    ("hf:vit,hiden_size=48", "ViTConfig has no hiden_size"),
    ("hf:vit,patch_size", "'patch_size' is not key=value"),
    ("hf:whisper", "no image or sequence classifier for 'whisper'"),
])
def test_a_timm_or_hugging_face_spec_it_cannot_build_is_one_line_naming_it(spec, words):
    with pytest.raises(ModelResolutionError) as error:
        resolve_model(spec)
    assert words in str(error.value) and spec in str(error.value) and "\n" not in str(error.value)


def test_attention_kernels_are_profiled_where_a_model_has_attention_and_only_there():
    from autocompress.hardware.profile_plan import ProfilePlan, _kernel_plan
    from autocompress.hardware.profiling import measure_kernels

    plan = ProfilePlan(models=("autocompress.zoo:small_vit",), input_sizes=(32,), kernels=20, heavy_kernels=5,
                       attention_kernels=12)
    attention = [k for k in _kernel_plan(plan) if k.op == "attention"]
    assert len(attention) >= 12 and {k.bits for k in attention} == {32}
    assert len({(k.groups, k.cin, k.h, k.cout) for k in attention}) >= 10  # broad shapes, not the model's few
    timed = measure_kernels(attention[:2], passes=2)
    assert all(0 < t.best_ms < 100 for t in timed)
    cnn = ProfilePlan(models=("reference_models:tiny_resnet",), input_sizes=(32,), kernels=20, heavy_kernels=5)
    assert not any(k.op == "attention" for k in _kernel_plan(cnn))


def test_a_vit_is_built_at_the_image_size_it_is_run_at(capsys):
    from autocompress.cli.main import main

    for spec in ("autocompress.zoo:small_vit", "timm:deit_tiny_patch16_224,patch_size=8,depth=1"):
        model = resolve_model(spec, image_size=64)
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    # a size the spec names is kept
    assert resolve_model("timm:deit_tiny_patch16_224,img_size=32,patch_size=8,depth=1",
                         image_size=64).patch_embed.img_size == (32, 32)
    assert main(["inspect", "autocompress.zoo:small_vit", "--input-shape", "1,3,64,64", "--json"]) == 0
    assert "257 tokens" in capsys.readouterr().out


def test_factorized_and_quantized_layers_still_show_the_weight_they_apply():
    # Hugging Face's ViT reads its patch embedding's weight (for its dtype) on every call.
    from autocompress.techniques.factorize import factorize, full_rank
    from autocompress.techniques.quantizers import QuantizedLayer, QuantizedOutput

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, 4)
    low_rank = factorize(conv, full_rank(conv))
    assert torch.allclose(low_rank.weight, conv.weight, atol=1e-5)
    low_rank[0] = QuantizedOutput(QuantizedLayer(low_rank[0], 8))
    assert low_rank.weight.shape == conv.weight.shape and low_rank[0].weight is low_rank[0].module.layer.weight


def test_ffn_hidden_widths_are_kept_on_a_grid_of_32():
    model, x = _vit(width=48), torch.randn(1, 3, 32, 32)  # FFN hidden width 96
    analysis = analyze(model, x)
    ffn = "encoder.layers.encoder_layer_0.mlp.0"
    for ratio, kept in ((0.75, 32), (0.375, 64), (0.125, 96)):  # 24 -> 32, 60 -> 64, 84 -> 96
        built = apply_candidate(model, Candidate(prune={ffn: ratio}, channel_multiple=8), analysis, x)
        assert built.get_submodule(ffn).out_features == kept


def test_uniform_warm_starts_cut_heads_in_the_share_they_cut_ffn_widths():
    from autocompress.core.policies import warm_start_policies

    analysis = analyze(_vit(heads=4), torch.randn(1, 3, 32, 32))
    policies = warm_start_policies(Space(analysis))
    heads = [f"heads/{a.name}" for a in analysis.attention]
    ffn = [v.name for v in Space(analysis).variables if v.kind == "prune"]
    for ratio, cut in ((0.25, 1), (0.5, 2), (0.75, 3)):
        for precision in ("int8", "fp32"):
            policy = policies[f"uniform-{ratio:g}-{precision}"]
            assert all(policy[h] == cut for h in heads) and all(policy[f] == ratio for f in ffn)
    assert all(policies["int8"][h] == 0 for h in heads)
