"""Blockwise distillation of cells: each inexact cell learns its block, is cached, and is reused."""

from __future__ import annotations

import csv

import pytest
import torch

from autocompress.core.analysis import analyze
from autocompress.core.search_space import load_search_space
from autocompress.train.blockwise import BlockwiseConfig, load_or_distill_cells
from autocompress.train.data import load_dataset
from autocompress.train.training import train_classifier
from autocompress.zoo import small_resnet

CONFIG = BlockwiseConfig(steps=40, samples=96)


@pytest.fixture(scope="module")
def trained():
    splits = load_dataset("digits", image_size=16)
    torch.manual_seed(0)
    model = small_resnet(widths=(16, 32))
    train_classifier(model, splits.train, steps=30)
    images = torch.stack([splits.train[i][0] for i in range(CONFIG.samples)])
    model.eval()
    return model, analyze(model, images[:1], space=load_search_space("search_spaces/example_user.yaml")), images


def _rows(folder):
    with open(folder / "losses.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_inexact_cell_is_distilled_and_never_made_worse(trained, tmp_path):
    model, analysis, images = trained
    weights = load_or_distill_cells(model, analysis, images, tmp_path, config=CONFIG, progress=False)
    expected = {f"{c.block}/{o.name}" for c in analysis.cells for o in c.options if not o.exact and o.name != "skip"}
    assert set(weights) == expected and len(expected) >= 8
    rows = _rows(tmp_path)
    assert {f"{r['block']}/{r['cell']}" for r in rows} == expected
    for row in rows:  # the kept weights imitate the block at least as well as the inherited ones
        kept = float(row["distilled_loss"]) if row["kept"] == "distilled" else float(row["inherited_loss"])
        assert kept <= float(row["inherited_loss"])
    # a cell new in structure (depthwise-separable) gains most from distillation
    dwsep = [r for r in rows if r["cell"] == "dwsep"]
    assert sum(r["kept"] == "distilled" for r in dwsep) >= len(dwsep) - 1


def test_a_second_run_reads_the_cache_and_a_lost_cell_is_redone(trained, tmp_path):
    model, analysis, images = trained
    first = load_or_distill_cells(model, analysis, images, tmp_path, config=CONFIG, progress=False)
    seconds = {(r["block"], r["cell"]): r["seconds"] for r in _rows(tmp_path)}
    lost = sorted(tmp_path.glob("*.pt"))[0]
    lost.unlink()  # as if the process was killed while training it
    second = load_or_distill_cells(model, analysis, images, tmp_path, config=CONFIG, progress=False)
    assert first.keys() == second.keys()
    redone = [(r["block"], r["cell"]) for r in _rows(tmp_path) if r["seconds"] != seconds[(r["block"], r["cell"])]]
    assert len(redone) == 1
    kept = [k for k in first if not lost.name.startswith(k.replace("/", "__").replace(" ", "_"))]
    assert all(torch.equal(first[k][n], second[k][n]) for k in kept for n in first[k])


def test_other_settings_start_the_library_again(trained, tmp_path):
    model, analysis, images = trained
    # short runs: what is checked is that the library starts again, not what it learns
    load_or_distill_cells(model, analysis, images, tmp_path, config=BlockwiseConfig(steps=5, samples=96),
                          progress=False)
    before = {(r["block"], r["cell"]): r["steps"] for r in _rows(tmp_path)}
    load_or_distill_cells(model, analysis, images, tmp_path, config=BlockwiseConfig(steps=10, samples=96),
                          progress=False)
    assert {r["steps"] for r in _rows(tmp_path)} == {"10"} and len(_rows(tmp_path)) == len(before)
