import random

import pytest
import torch

from autocompress import (
    Candidate,
    Space,
    SpaceOptions,
    analyze,
    apply_candidate,
    keep_channels,
    resolve_model,
)


@pytest.mark.parametrize("channels, ratio, multiple, kept", [
    (64, 0.0, 8, 64), (64, 0.3, 1, 45), (64, 0.3, 8, 48), (64, 0.5, 8, 32), (64, 0.75, 8, 16),
    (64, 0.9, 8, 8), (24, 0.5, 8, 16), (8, 0.75, 8, 8), (10, 0.95, 1, 1), (1280, 0.125, 16, 1120),
])
def test_keep_channels_rule(channels, ratio, multiple, kept):
    assert keep_channels(channels, ratio, multiple) == kept


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_keep_channels_rejects_ratios_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match="ratio"):
        keep_channels(64, ratio)


def test_tiny_resnet_groups_couple_residual_layers(tiny):
    analysis = analyze(tiny, torch.randn(1, 3, 16, 16))
    by_id = {g.id: g for g in analysis.groups}
    # The stem's channels flow through block1's residual add: stem conv and block1.conv2 share one group.
    residual = by_id["stem.0"]
    outs = {m.module for m in residual.members if m.direction == "out"}
    assert {"stem.0", "stem.1", "block1.conv2", "block1.bn2"} <= outs
    assert {m.module for m in residual.members if m.direction == "in"} >= {"block1.conv1", "down.0"}
    # The depthwise conv is cut together with the conv that feeds it.
    assert any(m.module == "dw.0" for m in by_id["down.0"].members)
    assert analysis.output_layer == "head"
    assert all(g.id != "head" for g in analysis.groups)


@pytest.mark.parametrize("ratio", [0.125, 0.25, 0.5, 0.75])
def test_pruning_removes_exactly_the_rule_count(ratio):
    model = resolve_model("resnet18")
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    for multiple in (1, 8):
        candidate = Candidate(prune={g.id: ratio for g in analysis.prunable_groups}, channel_multiple=multiple)
        pruned = apply_candidate(model, candidate, analysis, example)
        for group in analysis.prunable_groups:
            kept = keep_channels(group.channels, ratio, multiple)
            for member in group.members:
                module = pruned.get_submodule(member.module)
                if member.direction == "out":
                    size = module.out_channels if hasattr(module, "out_channels") else (
                        module.out_features if hasattr(module, "out_features") else module.num_features)
                    assert size == kept, (member, ratio, multiple)
        assert pruned(example).shape == (1, 10)


def test_pruned_tensors_really_shrink_and_original_is_untouched():
    model = resolve_model("mobilenet_v2")
    example = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = analyze(model, example)
    candidate = Candidate(prune={g.id: 0.5 for g in analysis.prunable_groups}, channel_multiple=8)
    pruned = apply_candidate(model, candidate, analysis, example)
    assert sum(p.numel() for p in pruned.parameters()) < 0.45 * sum(p.numel() for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_candidate_twice_gives_identical_weights():
    model = resolve_model("efficientnet_b0")
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    candidate = Space(analysis, SpaceOptions()).sample(random.Random(3))
    a = apply_candidate(model, candidate, analysis, example).state_dict()
    b = apply_candidate(model, candidate, analysis, example).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channel_shuffle_model_keeps_bits_and_ranks_with_a_note():
    model = resolve_model("shufflenet_v2_x0_5")
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example)
    assert analysis.prunable_groups == []
    assert any("channel shuffle" in note for note in analysis.notes)
    space = Space(analysis)
    kinds = {v.kind for v in space.variables}
    assert {"bits", "rank"} <= kinds and "prune" not in kinds
    candidate = space.sample(random.Random(0))
    assert apply_candidate(model, candidate, analysis, example)(example).shape == (1, 10)


def test_attention_projections_are_left_to_head_pruning_but_ffn_groups_prune():
    model = resolve_model("autocompress.zoo:transformer_classifier")
    analysis = analyze(model, torch.randn(1, 3, 32, 32))
    embed = analysis.group("patch_embed")
    assert not embed.prunable and "nn.Parameter" in embed.note  # the residual width: position embedding
    heads = analysis.group("encoder.layers.0.self_attn.q_proj")
    assert not heads.prunable and "cut by whole heads (heads/encoder.layers.0.self_attn)" in heads.note
    assert {g.id for g in analysis.prunable_groups} == {"encoder.layers.0.linear1", "encoder.layers.1.linear1"}
    assert [a.name for a in analysis.attention] == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
