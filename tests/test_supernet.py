"""Supernets (``space:PATH``): the file's checks, weight sharing between training and the cells the
search builds, and training that resumes where a kill left it."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, replace

import pytest
import torch
from reference_models import randomise_norms
from torch.utils.data import TensorDataset

from autocompress.cli.main import main
from autocompress.core.analysis import analyze
from autocompress.core.elastic_mobile import SKIPPED, OptionalInvertedResidual, SubnetShape
from autocompress.core.search_space import resolve_search_space
from autocompress.core.space import Space, SpaceOptions
from autocompress.core.supernet_file import SearchSpaceError, load_supernet_file
from autocompress.export.card import export_from_search
from autocompress.search.problem import ProblemSpec
from autocompress.search.run import LatencySettings, SearchSettings, run_search
from autocompress.techniques import apply_candidate
from autocompress.train import supernet as supernet_training
from autocompress.train.models import resolve_model
from autocompress.train.finetune import DistillationConfig
from autocompress.train.supernet import SupernetTrainingConfig, train_supernet

TINY = """
version: 1
name: tiny_supernet
supernet:
  stem: 8
  expand: [2, 4]
  kernel: [3, 5]
  stages:
    - {channels: 8, depth: [1, 2], stride: 2}
    - {channels: 16, depth: [1, 2, 3], stride: 2}
  head: 32
"""


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny_supernet.yaml"
    path.write_text(TINY)
    return path


def _tiny(path, classes=10):
    torch.manual_seed(0)  # the same initial weights, so two trainings can be compared
    return resolve_model(f"space:{path}", num_classes=classes)


def test_the_shipped_supernet_is_elastic_in_depth_expansion_and_kernel():
    spec = load_supernet_file("search_spaces/mobile_supernet.yaml")
    model = resolve_model("space:search_spaces/mobile_supernet.yaml")
    assert [s.depths for s in spec.stages] == [(2, 3, 4), (2, 3, 4), (2, 3, 4, 5, 6), (2, 3, 4, 5, 6)]
    assert len(model.blocks) == 4 + 4 + 6 + 6
    optional = [i for i, b in enumerate(model.blocks) if isinstance(b, OptionalInvertedResidual)]
    assert optional == [2, 3, 6, 7, 10, 11, 12, 13, 16, 17, 18, 19]  # past each stage's shallowest depth
    # the stem halves the 32-pixel map, as MobileNet-V2's does; the stages take it to 2x2
    assert spec.stem_stride == 2
    assert model.blocks[:1](model.stem(torch.zeros(1, 3, 32, 32))).shape[-1] == 8
    assert model.blocks(model.stem(torch.zeros(1, 3, 32, 32))).shape[-1] == 2


def test_a_subnet_run_by_slicing_computes_what_the_search_builds_from_its_cells(tiny_file):
    """Weight sharing end to end: the subnet training runs (leading channels, centre kernel, skipped
    blocks) is exactly the network ``apply_candidate`` builds from the same cell choices."""
    model = _tiny(tiny_file)
    randomise_norms(model, scales=True)
    example = torch.randn(1, 3, 32, 32)
    analysis = analyze(model, example, space=resolve_search_space("auto", model))
    assert not analysis.blocks and not analysis.kernels  # the only architecture choices are the cells
    space = Space(analysis, SpaceOptions())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rng = random.Random(3)
    for _ in range(4):
        model.set_subnet("random", rng)
        cells = {}
        for choice in analysis.cells:
            block = model.get_submodule(choice.block)
            if block.subnet == SKIPPED:
                cells[choice.block] = "skip"
            elif block.subnet is not None:
                expand = next(e for e in block.expands if block.hidden_width(e) == block.subnet.hidden)
                cells[choice.block] = f"mb e{expand:g} k{block.subnet.kernel}"
        with torch.no_grad():
            sliced = model.eval()(images)
        model.set_subnet(None)
        built = apply_candidate(model, space.default().replace(cell=cells), analysis, example)
        with torch.no_grad():
            assert torch.allclose(built(images), sliced, atol=1e-5), cells


def test_the_smallest_subnet_is_a_choice_of_the_search(tiny_file):
    model = _tiny(tiny_file)
    analysis = analyze(model, torch.randn(1, 3, 32, 32), space=resolve_search_space("auto", model))
    names = {c.block: c.names for c in analysis.cells}
    assert names["blocks.1"][-1] == "skip" and "skip" not in names["blocks.0"]  # depth [1, 2]: only the second
    assert "mb e2 k3" in names["blocks.0"] and "mb e4 k5" not in names["blocks.0"]  # the largest is "original"
    model.set_subnet("smallest")
    assert [b.subnet for b in model.blocks] == [SubnetShape(16, 3), SKIPPED, SubnetShape(16, 3), SKIPPED, SKIPPED]


def _digits_like(n=96, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, 32, 32, generator=generator) * 0.3
    images[:, 0, :8, :8] += labels.view(-1, 1, 1).float()  # a learnable signal
    return TensorDataset(images, labels)


def test_training_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_run_does(tiny_file, tmp_path,
                                                                                      monkeypatch):
    data = _digits_like()
    config = SupernetTrainingConfig(steps=6, batch_size=16, checkpoint_every=2)
    unbroken = train_supernet(_tiny(tiny_file, 4), data, tmp_path / "unbroken", config=config, progress=False)

    real_step = supernet_training._sandwich_step

    def killed_at_step_5(model, optimizer, train, step, cfg):
        if step == 5:
            raise KeyboardInterrupt  # stands in for the kill: steps 0-4 ran, the checkpoint holds 4
        real_step(model, optimizer, train, step, cfg)

    monkeypatch.setattr(supernet_training, "_sandwich_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(_tiny(tiny_file, 4), data, tmp_path / "broken", config=config, progress=False)
    monkeypatch.setattr(supernet_training, "_sandwich_step", real_step)
    resumed = train_supernet(_tiny(tiny_file, 4), data, tmp_path / "broken", config=config, progress=False)
    progress = (tmp_path / "broken" / "progress.json").read_text()
    assert '"resumed_from": 4' in progress and '"step": 6' in progress
    for (name, a), (_, b) in zip(unbroken.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_file, tmp_path):
    data = _digits_like()
    train_supernet(_tiny(tiny_file, 4), data, tmp_path, config=SupernetTrainingConfig(steps=2, batch_size=16,
                                                                                       checkpoint_every=1),
                   progress=False)
    train_supernet(_tiny(tiny_file, 4), data, tmp_path, config=SupernetTrainingConfig(steps=3, batch_size=16,
                                                                                       checkpoint_every=1),
                   progress=False)
    assert '"resumed_from": 0' in (tmp_path / "progress.json").read_text()


BAD_FILES = [
    ("    - {channels: 8, depth: [], stride: 2}", "supernet.stages[0].depth: empty"),
    ("    - {channels: 8, depth: [1, 12], stride: 2}", "depth 12 is outside what a stage allows (1 to 8"),
    ("    - {channels: 8, depth: [1], stride: 3}", "supernet.stages[0].stride: 3 is not 1 or 2"),
    ("    - {channels: 8, depth: [1], stride: 2, width: 2}", "unknown key 'width'"),
]


@pytest.mark.parametrize("stage, words", BAD_FILES)
def test_a_bad_stage_is_one_line_before_anything_is_trained(capsys, tmp_path, stage, words):
    path = tmp_path / "bad_supernet.yaml"
    path.write_text(TINY.replace("    - {channels: 8, depth: [1, 2], stride: 2}", stage))
    out = tmp_path / "run"
    code = main(["search", f"space:{path}", "--dataset", "digits", "--budget", "1ms", "--trials", "1", "--out",
                 str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert str(path) in err
    assert not (out / "baseline.pt").exists() and not (out / "supernet").exists()


@pytest.mark.parametrize("line, replacement, words", [
    ("  kernel: [3, 5]", "  kernel: [3, 4]", "supernet.kernel: 4: a depthwise kernel must be odd"),
    ("  expand: [2, 4]", "  expand: []", "supernet.expand: empty"),
    ("  stem: 8", "  stem: 8\n  family: nb101", "unknown family 'nb101'"),
    ("  stem: 8", "  stem: 8\n  stem_stride: 4", "supernet.stem_stride: 4 is not 1 or 2"),
])
def test_bad_elastic_choices_are_named(tmp_path, line, replacement, words):
    path = tmp_path / "bad_supernet.yaml"
    path.write_text(TINY.replace(line, replacement))
    with pytest.raises(SearchSpaceError, match=words.replace("[", r"\[")):
        load_supernet_file(path)


def test_a_search_of_a_space_trains_the_supernet_once_and_exports_a_subnet_of_its_front(tiny_file, tmp_path):
    """The whole path a user takes: search (supernet training, then trials that each pick a subnet
    with its compression), the front, a resumed search that does not train again, an export."""
    out = tmp_path / "search"
    settings = SearchSettings(problem=ProblemSpec(model=f"space:{tiny_file}", train_steps=6), budget="1.2x", out=out,
                              trials=4, finetune=DistillationConfig(steps=4), warm_start=False, guide="macs",
                              latency=LatencySettings.predicted_only())
    outcome = run_search(settings, progress=False)
    assert json.loads((out / "supernet" / "progress.json").read_text())["step"] == 6
    assert outcome.front and all(set(p.candidate["cell"]) == {f"blocks.{i}" for i in range(5)} for p in outcome.front)
    subnets = {json.dumps(r.candidate["cell"], sort_keys=True) for r in outcome.records}
    assert len(subnets) > 1  # the trials searched architectures, not only compression
    written = [(out / name).stat().st_mtime_ns for name in ("supernet/checkpoint.pt", "baseline.pt")]
    resumed = run_search(replace(settings, trials=5), progress=False)
    assert len(resumed.records) > len(outcome.records)
    # read from the cache, not trained (nor its statistics recomputed) again
    assert [(out / name).stat().st_mtime_ns for name in ("supernet/checkpoint.pt", "baseline.pt")] == written
    card = export_from_search(out, tmp_path / "export", trial=outcome.front[0].number, finetune_steps=4, passes=2,
                              runs=5, sweeps=1, pause_s=0.0, retrain=True)
    assert card["accuracy"]["retrained"] and card["model"] == f"space:{tiny_file}"
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert card["candidate"]["cell"] == outcome.front[0].candidate["cell"]


def _copies(fn, jobs, shared):
    """``map_jobs`` as a Ray executor runs it: each job gets its own copy of ``shared``."""
    for job in jobs:
        yield fn(copy.deepcopy(shared), job)


def test_data_parallel_steps_sum_the_shards_gradients_as_one_batch_would(tiny_file, tmp_path):
    data = _digits_like()
    config = SupernetTrainingConfig(steps=3, batch_size=16, checkpoint_every=3)
    here = train_supernet(_tiny(tiny_file, 4), data, tmp_path / "here", config=config, progress=False)
    spread = train_supernet(_tiny(tiny_file, 4), data, tmp_path / "one_shard", config=config, progress=False,
                            map_jobs=_copies, shards=1)
    for (name, a), (_, b) in zip(here.state_dict().items(), spread.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    two = train_supernet(_tiny(tiny_file, 4), data, tmp_path / "two_shards", config=config, progress=False,
                         map_jobs=_copies, shards=2)
    assert json.loads((tmp_path / "two_shards" / "progress.json").read_text())["where"] == "2 workers, data-parallel"
    moved = [not torch.equal(a, b) for (_, a), (_, b) in zip(_tiny(tiny_file, 4).state_dict().items(),
                                                            two.state_dict().items()) if a.is_floating_point()]
    assert all(moved)  # every weight and statistic trained


def test_a_supernet_asked_for_its_default_steps_by_number_or_by_auto_trains_once(tiny_file, tmp_path, digits,
                                                                                  monkeypatch):
    """The benchmark passes ``--train-steps 400``, the CLI's default is "auto" (400 sandwich steps):
    one training, so a search folder the one wrote is reused by the other."""
    from autocompress.train import baseline

    @dataclass(frozen=True)
    class ThreeSteps(SupernetTrainingConfig):
        steps: int = 3
        batch_size: int = 16

    monkeypatch.setattr(baseline, "SupernetTrainingConfig", ThreeSteps)
    arguments = dict(num_classes=10, weights=None, splits=digits, cache_dir=tmp_path)
    baseline.baseline_model(f"space:{tiny_file}", train_steps=3, **arguments)
    written = (tmp_path / "baseline.pt").stat().st_mtime_ns
    baseline.baseline_model(f"space:{tiny_file}", train_steps="auto", **arguments)
    assert (tmp_path / "baseline.pt").stat().st_mtime_ns == written
    baseline.baseline_model(f"space:{tiny_file}", train_steps=4, **arguments)  # more steps: trained on
    assert (tmp_path / "baseline.pt").stat().st_mtime_ns != written


_TRAIN_IN_A_CHILD = """
import sys, torch
torch.set_num_threads(1)  # as the suite runs: two threads on a busy 2-core machine ran 50x slower
sys.path.insert(0, sys.argv[3])
from test_supernet import _digits_like, _tiny
from autocompress.train.supernet import SupernetTrainingConfig, train_supernet
config = SupernetTrainingConfig(steps=int(sys.argv[2]), batch_size=16, checkpoint_every=3)
train_supernet(_tiny(sys.argv[1], 4), _digits_like(), sys.argv[4], config=config, progress=False)
"""


def test_training_killed_with_sigkill_resumes_losing_at_most_one_checkpoint_interval(tiny_file, tmp_path):
    """A real kill -9 of a training process (not an exception it could clean up after): the next
    run starts from the last checkpoint the killed one wrote, at most ``checkpoint_every`` steps back."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder, steps = tmp_path / "supernet", 30
    child = subprocess.Popen([sys.executable, "-c", _TRAIN_IN_A_CHILD, str(tiny_file), str(steps),
                              str(Path(__file__).parent), str(folder)])
    progress = folder / "progress.json"
    deadline = time.monotonic() + 120
    while (not progress.is_file() or json.loads(progress.read_text())["step"] < 6) and time.monotonic() < deadline:
        assert child.poll() is None, "the training ended before it could be killed"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    reached = json.loads(progress.read_text())["step"]  # written with each checkpoint, after it
    assert 6 <= reached < steps
    config, threads = SupernetTrainingConfig(steps=steps, batch_size=16, checkpoint_every=3), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_supernet(_tiny(tiny_file, 4), _digits_like(), folder, config=config, progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed = json.loads(progress.read_text())
    assert resumed["resumed_from"] == reached and resumed["step"] == steps  # lost only the steps after it
