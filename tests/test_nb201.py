"""NAS-Bench-201's space as a supernet (``space:`` with ``family: nb201_cell``): the file's checks,
one cell tied across the network, and weight sharing between training and the cells the search builds."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from reference_models import randomise_norms

from autocompress.cli.main import main
from autocompress.core.accounting import footprint_of_candidate, footprint_of_model
from autocompress.core.analysis import analyze
from autocompress.core.nb201 import Nb201Edge
from autocompress.core.nb201_file import EDGES
from autocompress.core.search_space import resolve_search_space
from autocompress.core.space import Space, SpaceOptions
from autocompress.core.supernet_file import SearchSpaceError, load_supernet_file
from autocompress.export.card import export_from_search
from autocompress.hardware.kernels import kernels_of_candidate, kernels_of_model
from autocompress.search.problem import ProblemSpec
from autocompress.search.run import LatencySettings, SearchSettings, run_search
from autocompress.techniques import apply_candidate
from autocompress.train.finetune import DistillationConfig
from autocompress.train.models import resolve_model

TINY = """
version: 1
name: tiny_nb201
supernet:
  family: nb201_cell
  channels: 8
  cells_per_stage: 2
"""
_SEARCH_NAME = {"skip_connect": "skip"}  # how the cell space names the benchmark's operations


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny_nb201.yaml"
    path.write_text(TINY)
    return path


def _model(path, seed=0):
    torch.manual_seed(seed)
    return randomise_norms(resolve_model(f"space:{path}"), seed)


def test_the_shipped_space_is_the_benchmarks_15625_cells_stacked_five_to_a_stage():
    spec = load_supernet_file("search_spaces/nb201_supernet.yaml")
    assert spec.cells == 5 ** 6 == 15_625 and spec.cells_per_stage == 5 and spec.tie_cells
    model = resolve_model("space:search_spaces/nb201_supernet.yaml")
    assert len(model.cell_names) == 15 and sum(isinstance(m, Nb201Edge) for m in model.modules()) == 90
    assert model.classifier.in_features == 64


def test_one_cell_decides_for_the_network_and_computes_what_training_ran(tiny_file):
    """The search's cell variables are the first cell's six edges; every other cell follows them,
    and the network ``apply_candidate`` builds equals the supernet running that cell."""
    model = _model(tiny_file)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    assert not analysis.blocks and not analysis.kernels
    space = Space(analysis, SpaceOptions())
    cell_vars = [v for v in space.variables if v.kind == "cell"]
    assert [v.unit for v in cell_vars] == [f"cells.0.edge_{to}_{source}" for to, source in EDGES]
    assert set(cell_vars[0].choices) == {"original", "nor_conv_1x1", "avg_pool_3x3", "skip", "none"}
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rng = random.Random(5)
    for _ in range(5):
        model.set_subnet("random", rng)
        first = model.edges()[0]
        assert all([e.op for e in cell] == [e.op for e in first] for cell in model.edges())  # tied
        ops = [edge.op for edge in first]
        cells = {f"cells.0.edge_{to}_{source}": _SEARCH_NAME.get(edge.op, edge.op)
                 for (to, source), edge in zip(EDGES, first) if edge.subnet is not None}
        with torch.no_grad():
            ran = model.eval()(images)
        model.set_subnet(None)
        built = apply_candidate(model, space.default().replace(cell=cells), analysis, example)
        with torch.no_grad():
            assert torch.allclose(built(images), ran, atol=1e-5), cells
        for name in model.cell_names:  # every cell became the chosen one
            for (to, source), op in zip(EDGES, ops):
                assert getattr(built.get_submodule(name), f"edge_{to}_{source}").op == op


@pytest.mark.parametrize("tie", ["true", "false"])
def test_what_is_priced_is_what_is_built(tmp_path, tie):
    """Accounting and the predictor's kernels follow the tied choice into every cell, leave out
    the edges that reach nothing, and cut each stage's channels as the built network does,
    whatever cell, pruning, bits and ranks a candidate combines."""
    path = tmp_path / "nb201.yaml"
    path.write_text(TINY + f"  tie_cells: {tie}\n")
    model = _model(path)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    space = Space(analysis, SpaceOptions())
    rng = random.Random(7)
    for _ in range(12):
        candidate = space.sample(rng)
        built = apply_candidate(model, candidate, analysis, example)
        assert footprint_of_candidate(analysis, candidate) == footprint_of_model(built, example), candidate
        assert kernels_of_candidate(analysis, candidate) == kernels_of_model(built, example), candidate
    pooled = space.default().replace(cell={v.unit: "avg_pool_3x3" for v in space.variables if v.kind == "cell"})
    built = apply_candidate(model, pooled, analysis, example)
    assert sum(p.numel() for p in built.parameters()) < sum(p.numel() for p in model.parameters()) / 2


def test_an_edge_that_reaches_nothing_is_neither_run_nor_priced(tiny_file):
    model = _model(tiny_file)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    space = Space(analysis, SpaceOptions())
    # node 3 takes only node 0: nodes 1 and 2, and every conv feeding them, compute nothing used
    cut = space.default().replace(cell={"cells.0.edge_3_1": "none", "cells.0.edge_3_2": "none"})
    kernels = {k.layer for k in kernels_of_candidate(analysis, cut)}
    assert "cells.0.edge_3_0.conv" in kernels and "cells.4.edge_3_0.conv" in kernels
    assert not any(f"edge_{e}.conv" in k for k in kernels for e in ("1_0", "2_0", "2_1", "3_1", "3_2"))
    built = apply_candidate(model, cut, analysis, example)
    with torch.no_grad():
        assert not torch.allclose(built(example), model.eval()(example))  # not the largest subnet...
    model.set_subnet(None)
    for cell in model.edges():
        cell[4].subnet, cell[5].subnet = "none", "none"
    with torch.no_grad():
        assert torch.allclose(built(example), model(example), atol=1e-5)  # ...the one the supernet trained


def test_untied_cells_each_get_their_own_variables(tmp_path):
    path = tmp_path / "untied.yaml"
    path.write_text(TINY + "  tie_cells: false\n")
    model = _model(path)
    analysis = analyze(model, torch.randn(1, 3, 32, 32), space=resolve_search_space("auto", model))
    assert len([v for v in Space(analysis).variables if v.kind == "cell"]) == 6 * 6
    model.set_subnet("random", random.Random(0))
    assert len({tuple(e.op for e in cell) for cell in model.edges()}) > 1


def test_a_narrowed_edge_offers_only_its_own_operations(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text(TINY + "  edges: {'3<-0': [none, skip_connect]}\n")
    model = _model(path)
    analysis = analyze(model, torch.randn(1, 3, 32, 32), space=resolve_search_space("auto", model))
    names = {c.block: c.names for c in analysis.cells}
    assert names["cells.0.edge_3_0"] == ("original", "none")  # skip_connect is the edge at rest
    assert len(names["cells.0.edge_1_0"]) == 5
    model.set_subnet("smallest")
    assert model.edges()[0][3].op == "skip_connect" and model.edges()[0][0].op == "skip_connect"


@pytest.mark.parametrize("edit, words", [
    ("  ops: [none, conv_5x5]\n", "supernet.ops: unknown operation 'conv_5x5'"),
    ("  ops: []\n", "supernet.ops: empty"),
    ("  edges: {'0<-3': [none]}\n", "supernet.edges.0<-3: no such edge"),
    ("  edges: {'3<-0': [sep_conv_3x3]}\n", "supernet.edges.3<-0: unknown operation 'sep_conv_3x3'"),
    ("  tie_cells: maybe\n", "supernet.tie_cells: 'maybe' is not true or false"),
    ("  depth: [2, 3]\n", "unknown key 'depth'"),
])
def test_a_bad_nb201_file_is_one_line_before_anything_is_trained(capsys, tmp_path, edit, words):
    path = tmp_path / "bad_nb201.yaml"
    path.write_text(TINY + edit)
    out = tmp_path / "run"
    code = main(["search", f"space:{path}", "--dataset", "digits", "--budget", "1ms", "--trials", "1", "--out",
                 str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (out / "baseline.pt").exists() and not (out / "supernet").exists()


@pytest.mark.parametrize("value", ["0", "9", "2.5", "true"])
def test_cells_per_stage_must_be_a_small_whole_number(tmp_path, value):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace("cells_per_stage: 2", f"cells_per_stage: {value}"))
    with pytest.raises(SearchSpaceError, match="supernet.cells_per_stage: .* is not a whole number from 1 to 8"):
        load_supernet_file(path)


def test_a_search_of_the_nb201_space_picks_cells_and_exports_one(tiny_file, tmp_path):
    out = tmp_path / "search"
    settings = SearchSettings(problem=ProblemSpec(model=f"space:{tiny_file}", train_steps=4), budget="0.8x", out=out,
                              trials=4, finetune=DistillationConfig(steps=3), warm_start=False, guide="macs",
                              latency=LatencySettings.predicted_only())
    outcome = run_search(settings, progress=False)
    assert json.loads((out / "supernet" / "progress.json").read_text())["step"] == 4
    cells = {json.dumps(r.candidate.get("cell", {}), sort_keys=True) for r in outcome.records}
    assert len(cells) > 1
    assert all(set(r.candidate.get("cell", {})) <= {f"cells.0.edge_{t}_{s}" for t, s in EDGES} for r in outcome.records)
    point = outcome.front[0]
    card = export_from_search(out, tmp_path / "export", trial=point.number, finetune_steps=3, passes=2, runs=5,
                              sweeps=1, pause_s=0.0)
    assert (tmp_path / "export" / "model.onnx").is_file() and card["candidate"]["cell"] == point.candidate["cell"]
    assert card["accuracy"]["top1_agreement_torch_onnx"] >= 0.95  # ONNX Runtime runs the network PyTorch does


def test_supernet_training_of_the_cell_space_runs_the_same_on_workers(tiny_file, tmp_path):
    """The sandwich's random cells are drawn from the step alone, so a worker given a shard draws
    the cells the driver would: one shard on a "worker" trains exactly as in-process."""
    from torch.utils.data import TensorDataset

    from autocompress.train.supernet import SupernetTrainingConfig, train_supernet

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    images = torch.randn(64, 3, 32, 32, generator=generator)
    images[:, 0, :8, :8] += labels.view(-1, 1, 1).float()
    data = TensorDataset(images, labels)
    config = SupernetTrainingConfig(steps=3, batch_size=16, checkpoint_every=3)

    def on_a_copy(fn, jobs, shared):
        for job in jobs:
            yield fn(copy.deepcopy(shared), job)

    here = train_supernet(_model(tiny_file), data, tmp_path / "here", config=config, progress=False)
    spread = train_supernet(_model(tiny_file), data, tmp_path / "spread", config=config, progress=False,
                            map_jobs=on_a_copy, shards=1)
    for (name, a), (_, b) in zip(here.state_dict().items(), spread.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    untrained = _model(tiny_file).state_dict()
    assert not torch.equal(untrained["cells.0.edge_1_0.conv.weight"], here.state_dict()["cells.0.edge_1_0.conv.weight"])
