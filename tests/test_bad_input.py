"""Bad input, kind by kind, across the commands: each ends in exactly one line on stderr,
``autocompress: error: ...``, that names the input and says what to do, with exit code 2, before
anything trains, and leaves every file already in the folders it touches as it was."""

from __future__ import annotations

import ast
import csv
import json
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from optuna.trial import TrialState

from autocompress.cli.main import main
from autocompress.search.folder import SearchFolder
from autocompress.search.storage import open_storage
from user_tasks import run_cli_with_tasks

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"

# A module of models that are not plain image classifiers, imported from tmp_path by spec.
USER_MODELS = '''
import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)


class NeedsMask(_Base):
    def forward(self, x, mask):
        return self.fc(self.stem(x).mean((2, 3))) * mask


class ReturnsDict(_Base):
    def forward(self, x):
        return {"logits": self.fc(self.stem(x).mean((2, 3)))}


class Branches(_Base):
    """Data-dependent Python control flow: autocompress runs models eagerly, so this is fine."""

    def forward(self, x):
        x = self.stem(x)
        for _ in range(int(x.abs().sum().item()) % 3 + 1):
            x = torch.relu(x) if x.mean() > 0 else x * 0.5
        return self.fc(x.mean((2, 3)))


def needs_mask(num_classes=10):
    return NeedsMask(num_classes)


def returns_dict(num_classes=10):
    return ReturnsDict(num_classes)


def branches(num_classes=10):
    return Branches(num_classes)
'''


def snapshot(*folders: Path) -> dict:
    """Every file under ``folders``: its bytes and modification time."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv: list[str], *words: str, untouched: tuple[Path, ...] = ()) -> str:
    """Run the CLI in this process; assert exit code 2 and one line naming ``words``, with the
    files under ``untouched`` unchanged. Returns the line."""
    before = snapshot(*untouched)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("autocompress: error: "), err
    for word in words:
        assert str(word) in lines[0], f"{word!r} not in {lines[0]!r}"
    assert snapshot(*untouched) == before, "a file was changed, added or removed"
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the cases: weights files, image folders, a user module."""
    root = tmp_path_factory.mktemp("inputs")
    import torchvision
    from PIL import Image

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "resnet18.pt")
    (root / "text.pt").write_text("these are not weights\n")
    (root / "random.pt").write_bytes(bytes(range(256)) * 8)
    (root / "a_file").write_text("not a folder\n")
    (root / "user_models.py").write_text(USER_MODELS)
    for name, classes in (("one_class", ["cat"]), ("not_an_image", ["cat", "dog"])):
        for cls in classes:
            (root / name / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / name / cls / f"{i}.png")
    (root / "not_an_image" / "dog" / "notes.png").write_text("a text file with an image's name\n")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def user_module(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    yield "user_models"
    sys.modules.pop("user_models", None)


def _identity_of_cli_search(out: Path) -> dict:
    """What `autocompress search resnet18 --budget 0.5x --out OUT` records: resuming it must match."""
    from autocompress.hardware import find_hardware_model
    from autocompress.search.problem import ProblemSpec
    from autocompress.search.run import SearchSettings
    from autocompress.train.finetune import DistillationConfig

    spec = ProblemSpec(model="resnet18", hardware=str(find_hardware_model()))
    return SearchSettings(problem=spec, budget="0.5x", out=out, finetune=DistillationConfig(steps=60)).identity()


@pytest.fixture(scope="module")
def search_folder(tmp_path_factory):
    """A search folder written by hand, as an earlier version's `autocompress search` wrote it:
    search.json, a SQLite study with two finished trials, pareto.json (nothing trains)."""
    out = tmp_path_factory.mktemp("search")
    return _write_search_folder(out, f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def journal_folder(tmp_path_factory):
    """The same search folder with today's default study, the journal file ``study.journal``."""
    out = tmp_path_factory.mktemp("journal_search")
    return _write_search_folder(out, open_storage(str(out / "study.journal")))


def _write_search_folder(out: Path, storage) -> Path:
    identity = _identity_of_cli_search(out)
    (out / "search.json").write_text(json.dumps({
        "identity": identity, "problem": identity["problem"], "budget": "0.5x", "budget_ms": 0.4,
        "baseline": {"accuracy": 0.9, "latency_ms": 0.8, "size_bytes": 4000}, "finetune": identity["finetune"],
        "sampler": "nsga2", "seed": 0, "storage": None, "host_level": None}, indent=2))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name="autocompress",
                                directions=["maximize", "minimize", "minimize"])
    for number, (accuracy, latency) in enumerate([(0.85, 0.3), (0.8, 0.2)]):
        trial = study.ask()
        for key, value in {"candidate": {"bits": {"fc": 8}}, "status": "evaluated", "origin": "sampler",
                           "predicted_ms": latency, "predicted_std_ms": 0.01, "size_bytes": 1000 + number,
                           "finetune_steps": 60, "seconds": 1.0, "accuracy": accuracy}.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("latency_over_budget_ms", latency - 0.4)
        study.tell(trial, [accuracy, latency, 1000 + number])
    (out / "pareto.json").write_text(json.dumps({
        "schema": 1, "budget_ms": 0.4, "baseline": {"accuracy": 0.9, "latency_ms": 0.8, "size_bytes": 4000},
        "best_under_budget": None, "n_trials": 2, "points": []}))
    return out


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for p in folder.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, words", [
    ("resnet99", ["model 'resnet99' is not a torchvision classification model", "close: resnet101"]),
    ("no_such_package.models:net", ["cannot import module 'no_such_package.models'", "PYTHONPATH"]),
    ("autocompress.zoo:no_such_factory", ["'autocompress.zoo' has no callable 'no_such_factory'"]),
])
def test_an_unknown_model_is_named(capsys, tmp_path, model, words):
    one_line_error(capsys, ["search", model, "--budget", "0.5x", "--out", tmp_path / "run"], *words)
    assert not (tmp_path / "run").exists()  # nothing is created for a search that cannot start


@pytest.mark.parametrize("factory, words", [
    ("needs_mask", ["cannot run on an input of shape (1, 3, 32, 32)", "missing 1 required positional argument",
                    "its forward must take one batch of images"]),
    ("returns_dict", ["returns a dict for an input of shape (1, 3, 32, 32)", "forward returns the logits"]),
])
def test_a_model_that_is_no_plain_classifier_is_refused_before_training(capsys, tmp_path, user_module, factory,
                                                                         words):
    one_line_error(capsys, ["search", f"{user_module}:{factory}", "--budget", "0.5x", "--out", tmp_path / "run"],
                   f"model '{user_module}:{factory}'", *words)
    assert not (tmp_path / "run").exists()


def test_data_dependent_control_flow_is_no_error(capsys, user_module):
    # The model runs eagerly (hooks, not a symbolic trace), so Python branches on values are fine.
    assert main(["inspect", f"{user_module}:branches"]) == 0
    assert "decision variables" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fix", [
    (["search", "vit_b_16", "--budget", "0.5x", "--out", "{tmp}/run"], "it needs --input-size 224"),
    (["inspect", "vit_b_16", "--input-shape", "1,3,32,32"], "give --input-shape 1,3,224,224"),
    (["apply", "vit_b_16", "--candidate", "random", "--out", "{tmp}/run"], "it needs --input-size 224"),
])
def test_a_model_that_needs_another_input_size_says_which(capsys, tmp_path, argv, fix):
    argv = [a.format(tmp=tmp_path) for a in argv]
    one_line_error(capsys, argv, "model 'vit_b_16' cannot run on an input of shape (1, 3, 32, 32)",
                   "Expected 224 but got 32", fix)
    assert not (tmp_path / "run").exists()


# ---- weights -----------------------------------------------------------------------------------


def test_weights_of_another_architecture_list_the_keys(capsys, tmp_path, files):
    one_line_error(capsys, ["search", "mobilenet_v2", "--weights", files / "resnet18.pt", "--budget", "0.5x",
                            "--out", tmp_path / "run"],
                   f"weights file '{files / 'resnet18.pt'}' does not match the model", "missing keys: classifier",
                   "unexpected keys: bn1", "check the model name", untouched=(files,))


class _Payload:
    """Unpickling this object would create ``marker``: code in a weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_weights_with_code_in_them_are_refused_and_never_run(capsys, tmp_path, writer):
    marker, weights = tmp_path / "payload_ran", tmp_path / "weights.pt"
    payload = {"conv1.weight": torch.zeros(1), "x": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    one_line_error(capsys, ["apply", "resnet18", "--weights", weights, "--candidate", "random",
                            "--out", tmp_path / "run"],
                   f"weights file '{weights}' is not a loadable state dict: it holds pickled Python objects "
                   "besides tensors", "refused, and nothing in it was run", "torch.save(model.state_dict(), path)",
                   untouched=(tmp_path,))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["text.pt", "random.pt"])
def test_a_weights_file_that_is_no_torch_file_is_named(capsys, tmp_path, files, name):
    one_line_error(capsys, ["inspect", "resnet18", "--weights", files / name],
                   f"weights file '{files / name}' is not a loadable state dict: it is no PyTorch file",
                   "torch.save(", untouched=(files,))


def test_every_torch_load_in_the_package_is_weights_only():
    """Loading a pickle runs its code; torch.load with weights_only=True refuses anything else."""
    unsafe = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                keywords = {k.arg: k.value for k in node.keywords}
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not unsafe, "torch.load without weights_only=True: " + ", ".join(unsafe)


# ---- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["0ms", "-1ms", "abc", "0.5"])
def test_an_unreadable_budget_says_how_to_write_one(capsys, tmp_path, budget):
    one_line_error(capsys, ["search", "resnet18", "--budget", budget, "--out", tmp_path / "run"],
                   f"--budget '{budget}': write a positive latency in milliseconds (5ms)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, budget", [("shufflenet_v2_x0_5", "0.05x"), ("resnet18", "0.001x")])
def test_a_budget_the_space_cannot_reach_is_refused_before_any_trial(capsys, tmp_path, model, budget):
    line = one_line_error(capsys, ["search", model, "--budget", budget, "--out", tmp_path / "run"],
                          f"--budget {budget} (", "cannot be reached: the fastest candidate found in the space is "
                          "predicted at", "or more, or let the space compress more (--prune-ratios")
    assert not (tmp_path / "run").exists()
    fastest_x = float(re.search(r"\(([\d.]+)x the baseline's", line).group(1))
    assert fastest_x > float(budget[:-1])


# ---- search folders, studies and storage -------------------------------------------------------


def test_a_corrupt_study_is_left_alone_when_a_search_resumes(capsys, tmp_path, search_folder):
    out = _copy(search_folder, tmp_path / "search")
    db = out / "study.db"
    db.write_bytes(db.read_bytes()[: len(db.read_bytes()) // 2])  # a copy cut short
    one_line_error(capsys, ["search", "resnet18", "--budget", "0.5x", "--out", out],
                   f"study {db} is corrupt (SQLite: ", "it was left as it is", f"move it away to start a new study in {out}",
                   "or choose another --out folder", untouched=(out,))


def test_export_names_a_study_that_is_not_a_database(capsys, tmp_path, search_folder):
    out = _copy(search_folder, tmp_path / "search")
    (out / "study.db").write_text("not a database\n")
    one_line_error(capsys, ["export", out, "--trial", "1", "--out", tmp_path / "export"],
                   f"study {out / 'study.db'} is corrupt (SQLite: file is not a database)", "restore",
                   untouched=(out,))
    assert not (tmp_path / "export").exists()


def test_a_corrupt_journal_is_left_alone_by_search_and_export(capsys, tmp_path, journal_folder):
    out = _copy(journal_folder, tmp_path / "search")
    journal = out / "study.journal"
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([*lines[:3], b'{"op_code": 5, "worker_id"', *lines[3:]]))  # a record broken
    one_line_error(capsys, ["search", "resnet18", "--budget", "0.5x", "--out", out],
                   f"study {journal} is corrupt (line 4: ", "it was left as it is",
                   f"move it away to start a new study in {out}", untouched=(out,))
    one_line_error(capsys, ["export", out, "--trial", "1", "--out", tmp_path / "export"],
                   f"study {journal} is corrupt (line 4: ", "restore it from a copy", untouched=(out,))


def test_a_journal_whose_last_write_was_cut_short_still_opens_with_every_finished_trial(tmp_path, journal_folder):
    out = _copy(journal_folder, tmp_path / "search")
    journal = out / "study.journal"
    journal.write_bytes(journal.read_bytes() + b'{"op_code": 5, "worker_id": "x", "tri')  # a full disk's torn write
    study = SearchFolder(out).load_study()  # a reader skips the torn record and changes nothing
    assert [t.values[0] for t in study.get_trials(states=(TrialState.COMPLETE,))] == [0.85, 0.8]
    assert not journal.read_bytes().endswith(b"\n")
    study = optuna.load_study(study_name="autocompress", storage=open_storage(str(journal)))  # as a search does
    assert journal.read_bytes().endswith(b"\n")  # the torn record was dropped, so the next append is whole
    study.enqueue_trial({})
    assert len(SearchFolder(out).load_study().get_trials()) == 3


@pytest.mark.parametrize("content, words", [
    (lambda text: text[: len(text) // 2], ["is unreadable (JSONDecodeError"]),
    (lambda text: "", ["is unreadable (JSONDecodeError"]),
    (lambda text: json.dumps({"problem": json.loads(text)["problem"]}), ["lacks 'budget, budget_ms, finetune'"]),
])
def test_export_names_a_damaged_search_json(capsys, tmp_path, search_folder, content, words):
    out = _copy(search_folder, tmp_path / "search")
    (out / "search.json").write_text(content((out / "search.json").read_text()))
    one_line_error(capsys, ["export", out, "--trial", "1", "--out", tmp_path / "export"],
                   str(out / "search.json"), *words, "rerun the search command", untouched=(out,))


@pytest.mark.parametrize("argv, words", [
    (["export", "{empty}", "--trial", "1", "--out", "{tmp}/export"], ["holds no search (no search.json)"]),
    (["export", "{search}", "--best-under", "soon", "--out", "{tmp}/export"], ["--best-under 'soon': write a"]),
    (["export", "{search}", "--trial", "7", "--out", "{tmp}/export"],
     ["--trial 7 is not a finished, fine-tuned trial", "autocompress pareto"]),
    (["export", "{search}", "--trial", "1", "--out", "{file}"], ["is a file, not a folder; choose another --out"]),
    (["pareto", "{tmp}/missing"], ["no search results in", "pareto.json is missing"]),
])
def test_export_and_pareto_name_the_folder(capsys, tmp_path, files, search_folder, argv, words):
    argv = [a.format(tmp=tmp_path, empty=files / "empty", search=search_folder, file=files / "a_file")
            for a in argv]
    one_line_error(capsys, argv, *words, untouched=(search_folder, files))
    assert not (tmp_path / "export").exists()


def test_pareto_reads_the_study_and_names_a_truncated_pareto_json_when_the_study_is_gone(capsys, tmp_path,
                                                                                        search_folder):
    out = _copy(search_folder, tmp_path / "search")
    text = (out / "pareto.json").read_text()
    (out / "pareto.json").write_text(text[: len(text) // 2])
    assert main(["pareto", str(out)]) == 0  # the front is recomputed from the study, which holds two trials
    assert "best accuracy within the 0.4 ms budget: trial 0" in capsys.readouterr().out
    (out / "study.db").unlink()
    one_line_error(capsys, ["pareto", out], f"{out / 'pareto.json'} is unreadable or incomplete", untouched=(out,))


@pytest.mark.parametrize("storage, words", [
    ("postgresql+psycopg2://user:secret@127.0.0.1:{port}/search", ["nothing answers at 127.0.0.1:{port}",
                                                                   "start the database server"]),
    ("nonsense", ["--storage 'nonsense' is not a storage URL"]),
    ("nosuchdb://user@127.0.0.1/x", ["names an unknown database 'nosuchdb'"]),
])
def test_an_unusable_storage_fails_fast_in_one_line(capsys, tmp_path, storage, words):
    port = _free_port()
    started = time.monotonic()
    line = one_line_error(capsys, ["search", "resnet18", "--budget", "0.5x", "--storage", storage.format(port=port),
                                   "--out", tmp_path / "run"], *(w.format(port=port) for w in words))
    assert time.monotonic() - started < 10
    assert "secret" not in line  # a password in the URL is not printed
    assert not (tmp_path / "run").exists()


def test_an_existing_file_as_out_is_left_alone(capsys, files):
    for argv in (["search", "resnet18", "--budget", "0.5x"], ["apply", "resnet18", "--candidate", "random"],
                 ["profile"], ["validate-predictor", "hardware_models/ort-cpu-1t", "--model", "resnet18"]):
        one_line_error(capsys, [*argv, "--out", files / "a_file"], f"--out {files / 'a_file'} is a file, not a folder",
                       untouched=(files,))


# ---- data sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, words", [
    ("empty", ["has no images in class sub-folders", "PATH/cat/1.png"]),
    ("one_class", ["has one class sub-folder ('cat')", "needs at least 2"]),
    ("not_an_image", ["notes.png' is not a readable image", "remove it"]),
    ("missing", ["does not exist", "imagefolder:PATH"]),
])
def test_an_image_folder_that_cannot_train_a_classifier_is_named(capsys, tmp_path, files, folder, words):
    one_line_error(capsys, ["search", "resnet18", "--dataset", f"imagefolder:{files / folder}", "--budget", "0.5x",
                            "--out", tmp_path / "run"], str(files / folder), *words, untouched=(files,))
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_a_data_set_name_gets_the_prefix(capsys, tmp_path, files):
    one_line_error(capsys, ["apply", "resnet18", "--dataset", files / "one_class", "--candidate", "random",
                            "--out", tmp_path / "run"], "unknown data set", f"write imagefolder:{files / 'one_class'}")


# ---- hardware models and space files -----------------------------------------------------------


def _hardware_copy(to: Path, *, kernels_cell: str | None = None, cut_models: bool = False) -> Path:
    """The hardware model `auto` picks, copied small: its metadata and kernels, its first 40
    candidates; with a kernels.csv cell replaced, or the last candidate row cut in half."""
    from autocompress.hardware import find_hardware_model

    source = Path(find_hardware_model())
    to.mkdir()
    (to / "metadata.json").write_bytes((source / "metadata.json").read_bytes())
    with (source / "kernels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    if kernels_cell is not None:
        rows[1][rows[0].index("best_ms")] = kernels_cell
    with (to / "kernels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with (source / "models.csv").open(newline="") as f:
        lines = [next(f) for _ in range(42)]
    if cut_models:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    (to / "models.csv").write_text("".join(lines))
    return to


def test_a_hardware_model_with_a_bad_cell_names_file_and_line(capsys, tmp_path):
    hardware = _hardware_copy(tmp_path / "hw", kernels_cell="fast")
    one_line_error(capsys, ["search", "resnet18", "--budget", "0.5x", "--hardware", hardware,
                            "--out", tmp_path / "run"],
                   f"{hardware / 'kernels.csv'} line 2 does not parse (best_ms 'fast' is not a number)",
                   "fix or delete that row", untouched=(hardware,))
    assert not (tmp_path / "run").exists()


def test_a_hardware_model_with_a_cut_csv_names_file_and_line(capsys, tmp_path):
    hardware = _hardware_copy(tmp_path / "hw", cut_models=True)
    one_line_error(capsys, ["validate-predictor", hardware, "--model", "resnet18", "--samples", "1"],
                   f"{hardware / 'models.csv'} line ", "does not parse", untouched=(hardware,))
    assert not (hardware / "validation").exists()


@pytest.mark.parametrize("argv, words", [
    (["search", "resnet18", "--budget", "0.5x", "--hardware", "{tmp}/no_hw", "--out", "{tmp}/run"],
     ["--hardware '{tmp}/no_hw' is not a hardware model folder"]),
    (["validate-predictor", "{tmp}/no_hw", "--model", "resnet18"], ["{tmp}/no_hw is not a hardware model folder"]),
    (["search", "resnet18", "--budget", "0.5x", "--space", "{tmp}/no_space.yaml", "--out", "{tmp}/run"],
     ["space file '{tmp}/no_space.yaml' does not exist", "search_spaces/"]),
    (["inspect", "resnet18", "--space", "{tmp}"], ["space file '{tmp}' is a folder; pass one .yaml file"]),
])
def test_a_missing_hardware_model_or_space_file_is_named(capsys, tmp_path, argv, words):
    one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv], *(w.format(tmp=tmp_path) for w in words))
    assert not (tmp_path / "run").exists()


# ---- apply, profile, validate-predictor --------------------------------------------------------


@pytest.mark.parametrize("candidate, words", [
    ({"bits": {"layer9.conv1": 8}}, ["Candidate bits names 'layer9.conv1', which is not a bits unit",
                                     "autocompress inspect"]),
    ("{\"bits\": ", ["Candidate is not valid JSON"]),
])
def test_apply_names_the_candidate_file_and_what_is_wrong(capsys, tmp_path, candidate, words):
    path = tmp_path / "candidate.json"
    path.write_text(candidate if isinstance(candidate, str) else json.dumps(candidate))
    one_line_error(capsys, ["apply", "resnet18", "--candidate", path, "--train-steps", "300",
                            "--out", tmp_path / "run"], f"--candidate '{path}': ", *words)
    assert not (tmp_path / "run").exists()  # refused before the baseline trains


@pytest.mark.parametrize("argv, words", [
    (["profile", "--target", "tpu"], ["argument --target: invalid choice: 'tpu'", "`autocompress profile --help`"]),
    (["profile", "--threads", "0", "--out", "{tmp}/hw"], ["argument --threads: '0' is not a positive integer"]),
    (["profile", "--max-minutes", "-5", "--out", "{tmp}/hw"], ["max_minutes > 0", "fix --kernels"]),
    (["profile", "--add-validation", "{tmp}/nope.json", "--out", "{tmp}/hw"],
     ["{tmp}/nope.json is not a validation report", "validate-predictor"]),
    (["validate-predictor", "hardware_models/ort-cpu-1t", "--model", "resnet18", "--samples", "0"],
     ["argument --samples: '0' is not a positive integer", "`autocompress validate-predictor --help`"]),
    (["validate-predictor", "hardware_models/ort-cpu-1t", "--model", "resnet18", "--input-shape", "1,3,32"],
     ["--input-shape 1,3,32 is not supported", "1,3,H,W"]),
    (["validate-predictor", "hardware_models/ort-cpu-1t", "--model", "resnet99"],
     ["model 'resnet99' is not a torchvision classification model"]),
    (["validate-predictor", "hardware_models/ort-cpu-1t", "--model", "vit_b_16"],
     ["model 'vit_b_16' cannot run on an input of shape (1, 3, 32, 32)", "give --input-shape 1,3,224,224"]),
    (["search", "resnet18", "--budget", "0.5x"], ["the following arguments are required: --out"]),
])
def test_profile_and_validate_predictor_arguments_are_one_line(capsys, tmp_path, argv, words):
    one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv], *(w.format(tmp=tmp_path) for w in words),
                   untouched=(Path("hardware_models/ort-cpu-1t"),))
    assert not (tmp_path / "hw").exists()


def test_the_installed_command_prints_one_line_too(tmp_path):
    """Outside pytest nothing captures warnings or logs: the process's own stderr is one line."""
    result = subprocess.run([sys.executable, "-m", "autocompress.cli", "search", "resnet18", "--budget", "-1ms",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["autocompress: error: --budget '-1ms': write a positive latency in "
                                          "milliseconds (5ms) or a share of the baseline's latency (0.5x)"]


# ---- tasks (--task) and data roots ------------------------------------------------------------


@pytest.mark.parametrize("task, message", [
    ("no_such_module:make", "cannot import module 'no_such_module'"),
    ("user_task:nothing", "has no function 'nothing'"),
    ("user_task:broken", "raised ValueError: no data here; fix the function"),
    ("user_task:not_a_task", "returned a dict, not an autocompress Task"),
    ("user_task:nan_score", "score 'bad' returned nan, not a finite number"),
    ("user_task:empty_val", "val holds no items"),
    ("user_task:other_shape", "train's inputs have shape \\(3, 16, 16\\), the example input \\(1, 3, 20, 20\\)"),
])
def test_a_bad_task_is_one_line_exit_2_and_writes_nothing(tmp_path, task, message):
    out = tmp_path / "search"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = run_cli_with_tasks(tmp_path, "search", "--task", task, "--budget", "0.7x", "--out", str(out), "--quiet")
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autocompress: error: "), run.stderr
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_a_data_root_without_the_files_is_one_line_exit_2(tmp_path):
    run = run_cli_with_tasks(tmp_path, "search", "resnet18", "--dataset", "cifar100", "--data-root", str(tmp_path / "nothing"),
               "--budget", "0.5x", "--out", str(tmp_path / "s"))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar100 is not under --data-root" in lines[0] and "cifar-100-python" in lines[0]
    assert not (tmp_path / "s").exists()
