"""Hugging Face BERT and DistilBERT on token ids: heads, FFN widths, layer drop, bits and ranks;
exact accounting; export with an int64 input that ONNX Runtime agrees with; a search through a Task."""

import copy
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from autocompress import Candidate, Space, analyze, apply_candidate, export_and_compare
from autocompress.core.accounting import footprint_of_candidate, footprint_of_model
from autocompress.core.library_attention import is_hf_attention, split_attention
from autocompress.errors import ModelResolutionError
from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model
from autocompress.train.models import check_model_runs, resolve_model
from autocompress.train.task import Task

pytest.importorskip("transformers")

VOCAB, TOKENS = 64, 16
BERT = ("hf:bert,vocab_size=64,hidden_size=48,num_hidden_layers=2,num_attention_heads=3,intermediate_size=96,"
        "max_position_embeddings=32")
DISTILBERT = "hf:distilbert,vocab_size=64,dim=48,n_layers=2,n_heads=3,hidden_dim=96,max_position_embeddings=32"


def _model(spec):
    torch.manual_seed(0)
    return resolve_model(spec, num_classes=3).eval()


def _ids(count, seed=0):
    """Token ids with padding (id 0) at the end of every other sequence."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (count, TOKENS), generator=generator)
    for row in range(1, count, 2):
        ids[row, TOKENS // 2 + row % (TOKENS // 2):] = 0
    return ids


@pytest.mark.parametrize("spec", [BERT, DISTILBERT])
def test_bert_attention_splits_into_the_same_function_and_padding_is_masked(spec):
    model, ids = _model(spec), _ids(6)
    split = copy.deepcopy(model)
    assert split_attention(split) == [] and not any(is_hf_attention(m) for m in split.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids), split(ids), atol=1e-5)
        # what stands behind a padding id does not change the logits
        changed = ids.clone()
        changed[ids == 0] = 0
        changed[1, -1] = 0
        assert torch.allclose(split(ids), split(changed), atol=1e-5)
        longer = torch.cat([ids, torch.zeros(len(ids), 4, dtype=ids.dtype)], 1)
        assert torch.allclose(split(ids), split(longer), atol=1e-5)


@pytest.mark.parametrize("spec", [BERT, DISTILBERT])
def test_bert_offers_heads_ffn_widths_layer_drop_bits_and_ranks_and_accounts_them_exactly(spec):
    model, ids = _model(spec), _ids(1)
    analysis = analyze(model, ids)
    space = Space(analysis)
    kinds = {v.kind for v in space.variables}
    assert {"heads", "prune", "skip", "bits", "rank"} <= kinds
    assert sum(v.kind == "skip" for v in space.variables) == 2 and len(analysis.attention) == 2
    assert all(a.tokens == TOKENS and a.heads == 3 and a.split for a in analysis.attention)
    rng, cut = random.Random(3), 0
    for _ in range(5):
        candidate = space.sample(rng)
        built = apply_candidate(model, candidate, analysis, ids)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, ids)
        assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, ids)
        cut += sum(candidate.heads.values()) + sum(candidate.skip.values())
    assert cut > 0


@pytest.mark.parametrize("spec, bits", [(BERT, 32), (BERT, 16), (BERT, 8), (BERT, 4), (DISTILBERT, 8)])
def test_a_cut_bert_exports_with_token_ids_and_onnx_runtime_agrees(spec, bits, tmp_path):
    model, ids = _model(spec), _ids(64, seed=1)
    torch.nn.init.normal_(model.model.classifier.weight, std=0.5)  # logits far enough apart to compare top-1
    analysis = analyze(model, ids[:1])
    candidate = Candidate(heads={a.name: 1 for a in analysis.attention},
                          prune={g.id: 0.25 for g in analysis.prunable_groups},
                          bits={u.name: bits for u in analysis.layers})
    built = apply_candidate(model, candidate, analysis, ids[:1])
    result, torch_logits, ort_logits = export_and_compare(built, ids[:1], tmp_path / "bert.onnx", ids,
                                                          calibration=[ids[:32]])
    import onnx

    assert onnx.load(str(result.path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    spread = torch_logits.std()
    assert np.quantile(np.abs(torch_logits - ort_logits), 0.99) <= (1e-4 if bits > 8 else 0.1) * spread
    assert (torch_logits.argmax(1) == ort_logits.argmax(1)).mean() >= (1.0 if bits > 8 else 0.95)


@pytest.mark.parametrize("inputs, words", [
    (torch.randn(1, 3, 32, 32), "takes token ids"),
    (torch.full((1, TOKENS), VOCAB), "outside the model's vocabulary (0 to 63)"),
    (torch.ones(1, 40, dtype=torch.long), "more than the model's max_position_embeddings (32)"),
])
def test_a_text_model_given_the_wrong_input_says_so_in_one_line(inputs, words):
    with pytest.raises(ModelResolutionError) as error:
        check_model_runs(_model(BERT), inputs, spec=BERT, needs=str, size_name="--input-size")
    assert words in str(error.value) and BERT in str(error.value) and "\n" not in str(error.value)


def _counting_task(count: int, seed: int) -> TensorDataset:
    """Sequences whose class says whether token 1 or token 2 occurs more often (or equally): a
    task the attention has to solve, learnt by a small BERT in a few hundred steps."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 8, (count, TOKENS), generator=generator)
    marks = torch.randint(0, 3, (count, TOKENS), generator=generator)
    ids = torch.where(marks == 0, torch.randint(1, 3, (count, TOKENS), generator=generator), ids)
    ones, twos = (ids == 1).sum(1), (ids == 2).sum(1)
    labels = torch.where(ones > twos, 0, torch.where(ones < twos, 1, 2))
    return TensorDataset(ids, labels)


def test_a_search_runs_on_a_bert_task_and_its_front_exports(tmp_path):
    from autocompress.export.card import export_from_search
    from autocompress.search.run import LatencySettings, SearchSettings, run_search
    from autocompress.train.finetune import DistillationConfig
    from autocompress.train.training import accuracy, train_classifier

    train, val, test = _counting_task(3000, 0), _counting_task(400, 1), _counting_task(400, 2)
    torch.manual_seed(0)
    model = train_classifier(resolve_model(BERT.replace("vocab_size=64", "vocab_size=8"), num_classes=3), train,
                             steps=300)
    assert accuracy(model, val) > 0.6  # learnt: chance is about 0.4
    task = Task(model=model, train=train, val=val, test=test, name="counting")
    settings = SearchSettings(problem=task, budget="0.7x", out=tmp_path / "run", trials=4,
                              finetune=DistillationConfig(steps=30), latency=LatencySettings.predicted_only())
    outcome = run_search(settings, progress=False)
    assert outcome.front and any(r.status == "evaluated" for r in outcome.records)
    card = export_from_search(tmp_path / "run", tmp_path / "export", trial=(outcome.best or outcome.front[0]).number, task=task,
                              finetune_steps=30, passes=2, runs=5, sweeps=1, pause_s=0.0)
    assert card["test"]["exported_onnx"] == pytest.approx(card["test"]["exported_torch"], abs=0.03)
    assert card["test"]["exported_onnx"] > 0.5 and card["test"]["baseline"] > 0.6


def test_inspect_lists_a_text_models_decisions_at_a_token_count(capsys):
    from autocompress.cli.main import main

    assert main(["inspect", DISTILBERT, "--input-shape", "1,24"]) == 0
    shown = capsys.readouterr().out
    assert "3 heads x 16, 24 tokens" in shown and "skip" in shown and "heads cut {0,1,2} of 3" in shown


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_weights_saved_by_hugging_face_itself_load_through_weights(name, tmp_path):
    trained = _model(BERT)
    state = dict(trained.model.state_dict())  # named as save_pretrained names them: no wrapper prefix
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]  # a buffer older versions saved
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    else:
        torch.save(state, tmp_path / name)
    torch.manual_seed(1)
    loaded = resolve_model(BERT, num_classes=3, weights=tmp_path / name)
    with torch.no_grad():
        assert torch.equal(loaded(_ids(4)), trained(_ids(4)))
