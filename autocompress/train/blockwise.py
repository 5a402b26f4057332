"""Blockwise distillation of NAS cells (DONNA, Moons et al. 2021): each cell that does not compute
what its block computes learns to, from the block's own inputs, before the search fine-tunes any
candidate that uses it.

The trained model runs once over a sample of the training split with hooks on every block that has
cells, recording each block's input and output; each cell then trains on those pairs alone (mean
squared error, normalised by the output's variance, so losses compare across blocks), a few
hundred steps on a tensor the size of one feature map. A held-out share of the pairs scores the
inherited weights and the distilled ones, and the better of the two is kept: distillation can only
help. The library is cached in the search folder's ``cells/`` (a resumed search, an export and a
worker read it back), with ``losses.csv`` saying how well each cell imitates its block.

Each (block, cell) is one independent job, so a caller may spread them over workers (``map_jobs``).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.cell_choices import SKIP
from ..core.cells import build_cell
from ..files import atomic_path, inside, write_csv_atomic
from ..techniques.cell import cell_key

__all__ = ["BlockwiseConfig", "CellFit", "CellJob", "distill_cell", "load_or_distill_cells", "record_block_io"]


@dataclass(frozen=True)
class BlockwiseConfig:
    steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    samples: int = 512  # training images whose block inputs are recorded
    held_out: float = 0.2  # share of them that scores the cell instead of training it
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.samples < 8 or not 0 < self.held_out < 1:
            raise ValueError(f"invalid blockwise distillation settings: {self}")


@dataclass(frozen=True)
class CellJob:
    """Everything one worker needs to distill one cell: plain tensors and a block module."""

    block_name: str
    cell: str
    spec: object
    block: nn.Module
    input_shape: tuple[int, ...]
    inputs: torch.Tensor
    outputs: torch.Tensor
    config: BlockwiseConfig


@dataclass(frozen=True)
class CellFit:
    block: str
    cell: str
    inherited_loss: float  # held-out loss of the inherited weights
    distilled_loss: float  # held-out loss after blockwise distillation
    kept: str  # "distilled" or "inherited": whichever imitates the block better
    steps: int
    seconds: float
    where: str  # host:pid of the process that trained it


def record_block_io(model: nn.Module, blocks: list[str], images: torch.Tensor, *, batch_size: int = 128
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named block's inputs and outputs over ``images``, in eval mode (as the model runs)."""
    records: dict[str, tuple[list, list]] = {name: ([], []) for name in blocks}

    def hook(name):
        def keep(module, args, output):
            records[name][0].append(args[0].detach())
            records[name][1].append(output.detach())
        return keep

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in blocks]
    try:
        with torch.no_grad():
            model.eval()
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: (torch.cat(ins), torch.cat(outs)) for name, (ins, outs) in records.items()}


def _loss(cell: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    return ((cell(inputs) - outputs) ** 2).mean() / outputs.var().clamp_min(1e-8)


def distill_cell(job: CellJob) -> tuple[CellFit, dict]:
    """Train one cell to imitate its block; its fit and the state dict to keep."""
    started = time.perf_counter()
    config = job.config
    torch.manual_seed(config.seed)
    cell = build_cell(job.block, job.spec, job.input_shape)
    split = max(1, int(len(job.inputs) * config.held_out))
    train_in, train_out = job.inputs[split:], job.outputs[split:]
    test_in, test_out = job.inputs[:split], job.outputs[:split]
    with torch.no_grad():
        inherited = float(_loss(cell.eval(), test_in, test_out))
    kept = {k: v.clone() for k, v in cell.state_dict().items()}
    optimizer = torch.optim.Adam(cell.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.steps))
    generator = torch.Generator().manual_seed(config.seed)
    cell.train()
    for _ in range(config.steps):
        batch = torch.randint(len(train_in), (min(config.batch_size, len(train_in)),), generator=generator)
        optimizer.zero_grad()
        loss = _loss(cell, train_in[batch], train_out[batch])
        if not torch.isfinite(loss):
            break
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        distilled = float(_loss(cell.eval(), test_in, test_out))
    better = distilled < inherited
    fit = CellFit(job.block_name, job.cell, inherited, distilled, "distilled" if better else "inherited",
                  config.steps, time.perf_counter() - started, f"{socket.gethostname()}:{os.getpid()}")
    return fit, (cell.state_dict() if better else kept)


def _jobs(model, analysis, images, config) -> Iterable[CellJob]:
    # A supernet's cells were trained with it, sharing its weights: they need no distilling of their own.
    if getattr(model, "architecture_in_cells_only", False):
        return
    todo = [(c, o) for c in analysis.cells for o in c.options if not o.exact and o.name != SKIP]
    blocks = sorted({c.block for c, _ in todo})
    io = record_block_io(model, blocks, images) if blocks else {}
    for choice, option in todo:
        inputs, outputs = io[choice.block]
        yield CellJob(choice.block, option.name, option.spec, model.get_submodule(choice.block),
                      choice.input_shape, inputs, outputs, config)


def load_or_distill_cells(model: nn.Module, analysis, images: torch.Tensor, folder: Path, *,
                          config: BlockwiseConfig = BlockwiseConfig(),
                          map_jobs: Callable[[Callable, list], Iterable] | None = None,
                          progress: bool = True) -> dict[str, dict]:
    """The distilled weights of every inexact cell of ``analysis``, by ``cell_key``: read from
    ``folder`` where a run with the same settings left them, trained (and written there) otherwise.

    ``map_jobs(fn, jobs)`` yields ``fn(job)`` for each job, in any order (default: one after the other
    here); a kill loses only the cells in training, since each is written as soon as it is done."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "settings.json"
    wanted = {"config": asdict(config), "images": len(images)}
    if settings.is_file() and json.loads(settings.read_text()) != wanted:
        for stale in [*folder.glob("*.pt"), folder / "losses.csv"]:
            stale.unlink(missing_ok=True)  # another model or settings: nothing here applies
    settings.write_text(json.dumps(wanted, indent=2) + "\n")
    images = images[: config.samples]
    jobs = list(_jobs(model, analysis, images, config))
    weights, fits, todo = {}, _read_fits(folder), []
    for job in jobs:
        key, path = cell_key(job.block_name, job.cell), _path(folder, job.block_name, job.cell)
        if path.is_file() and key in fits:
            weights[key] = torch.load(path, weights_only=True)
        else:
            todo.append(job)
    results = (map_jobs or _one_by_one)(distill_cell, todo)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="blockwise distillation", unit="cell",
              disable=not progress) as bar:
        for fit, state in results:
            key = cell_key(fit.block, fit.cell)
            with atomic_path(_path(folder, fit.block, fit.cell)) as partial:
                torch.save(state, partial)
            weights[key], fits[key] = state, fit
            _write_fits(folder, fits)
            bar.set_postfix_str(f"{fit.block} {fit.cell}: {fit.distilled_loss:.3f}")
            bar.update()
    return weights


def _one_by_one(fn, jobs):
    for job in jobs:
        yield fn(job)


def _path(folder: Path, block: str, cell: str) -> Path:
    # Module names of a user's model name the file: kept inside the cache folder whatever they hold.
    return inside(folder, f"{block}__{cell}".replace(" ", "_").replace("/", "_") + ".pt")


def _read_fits(folder: Path) -> dict[str, CellFit]:
    path = folder / "losses.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    fits = {}
    for row in rows:
        try:
            fit = CellFit(row["block"], row["cell"], float(row["inherited_loss"]), float(row["distilled_loss"]),
                          row["kept"], int(row["steps"]), float(row["seconds"]), row["where"])
        except (KeyError, ValueError):
            continue  # a line a kill cut short: that cell is distilled again
        fits[cell_key(fit.block, fit.cell)] = fit
    return fits


def _write_fits(folder: Path, fits: dict[str, CellFit]) -> None:
    rows = [asdict(f) for f in sorted(fits.values(), key=lambda f: (f.block, f.cell))]
    # never a half-written table, even when killed
    write_csv_atomic(folder / "losses.csv", list(CellFit.__dataclass_fields__), rows)
