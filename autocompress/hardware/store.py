"""A hardware model folder (``hardware_models/NAME``): measurements, metadata, fitted predictor.

- ``kernels.csv`` and ``models.csv``: the raw measurements (profiling appends to them). They are
  the source of truth and what the repository commits;
- ``metadata.json``: target, threads, the machine it was measured on, the profiling plan, library
  versions and the predictor's settings;
- ``predictor.joblib`` + ``predictor.json``: the fitted ``LatencyPredictor``, its SHA-256, the
  scikit-learn version and predictor format, and the SHA-256 of the two CSV files it was fit on. A
  pickle runs code when loaded and ties itself to one scikit-learn version, so it is a local cache
  (not committed): it is loaded only when all of these match (measurements pulled or profiled
  since make it stale), and otherwise the predictor is refit from the CSV files (seconds) and the
  cache rewritten.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import joblib
import numpy as np
import sklearn
import torch

from ..errors import AutocompressError
from ..version import __version__
from .kernels import KERNEL_FIELDS, Kernel, candidate_table, kernel_table, kernels_of_model
from ..core.target import DEFAULT_TARGET, Target, target
from .predictor import LatencyPrediction, LatencyPredictor
from .measurements import measurement_file, profile_level_ms, read_kernel_measurements, read_model_measurements
from .profile_plan import ProfilePlan

__all__ = ["AUTO", "DifferentMachineWarning", "HardwareModel", "PIN_VARIABLE", "SHIPPED_MODELS", "find_hardware_model",
           "fit_hardware_model", "load_hardware_model", "recorded_plan"]

log = logging.getLogger(__name__)

AUTO = "auto"  # the --hardware value that picks a hardware model measured on a machine like this one
# The hardware models shipped with autocompress, one per machine class it was profiled on: in an
# installed package, gzipped package data (setup.py puts them there); in a source checkout, the
# repository's hardware_models/.
_PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_hardware_models"
# Pins what find_hardware_model's default search returns (see there).
PIN_VARIABLE = "AUTOCOMPRESS_HARDWARE_MODEL"
SHIPPED_MODELS = _PACKAGE_DATA if _PACKAGE_DATA.is_dir() else Path(__file__).resolve().parents[2] / "hardware_models"


class DifferentMachineWarning(UserWarning):
    """The hardware model was measured on another CPU (or runtime version) than this one."""


class HardwareModel:
    """A fitted latency predictor for one target, and what it was measured on.

    ``level`` multiplies every prediction: 1 reads the machine at the speed it had when measured;
    ``at_level`` sets the host's speed now (``host_level.measure_host_level``)."""

    def __init__(self, predictor: LatencyPredictor, metadata: dict, level: float = 1.0) -> None:
        self.predictor = predictor
        self.metadata = metadata
        self.level = level

    @property
    def target(self) -> Target:
        """The target it was measured on (hardware models from before targets were named: ort-cpu)."""
        return target(_target_name(self.metadata))

    @property
    def quantization_rules(self):
        """The integer ranges the simulation follows: the measured machine's, not the host's."""
        return self.target.quantization_rules(self.metadata.get("machine") or None)

    def at_level(self, level: float) -> HardwareModel:
        """The same predictor, its predictions multiplied by ``level``."""
        return HardwareModel(self.predictor, self.metadata, level)

    def predict_candidate(self, analysis, candidate) -> LatencyPrediction:
        """Predicted latency of ``candidate`` on the analysed model, from the Candidate alone."""
        return self._leveled(self.predictor.predict_table(*candidate_table(analysis, candidate)))

    def predict_candidates(self, analysis, candidates) -> tuple[np.ndarray, np.ndarray]:
        """Latencies (ms) and standard deviations of many candidates in one pass (the fast path)."""
        ms, std = self.predictor.predict_tables([candidate_table(analysis, c)[0] for c in candidates])
        return ms * self.level, std * self.level

    def learn_kernels(self, analysis, candidates) -> None:
        """Price once the kernels ``candidates`` are made of, so that a later candidate made of the same
        kernels is predicted without walking stage 1's trees for them: what makes one new candidate
        of a search cheap (a few hundred random ones of its space cover most kernels its layers take)."""
        self.predictor.price_kernels([candidate_table(analysis, c)[0] for c in candidates])

    def predict_model(self, model: torch.nn.Module, example_input: torch.Tensor) -> LatencyPrediction:
        """Predicted latency of a built model (for example one ``apply_candidate`` returned)."""
        return self._leveled(self.predictor.predict(kernels_of_model(model, example_input)))

    def _leveled(self, prediction: LatencyPrediction) -> LatencyPrediction:
        if self.level == 1.0:
            return prediction
        return LatencyPrediction(prediction.ms * self.level, prediction.std_ms * self.level,
                                 {layer: ms * self.level for layer, ms in prediction.per_layer_ms.items()})


def fit_hardware_model(folder: Path, *, plan: ProfilePlan | None = None,
                       predictor: LatencyPredictor | None = None) -> HardwareModel:
    """Fit a predictor on the measurements in ``folder``; write metadata.json and the predictor cache."""
    folder = Path(folder)
    kernel_rows = read_kernel_measurements(folder / "kernels.csv")
    model_rows = read_model_measurements(folder / "models.csv")
    if not kernel_rows or not model_rows:
        raise AutocompressError(f"{folder} holds no measurements to fit; run `autocompress profile --out {folder}` first")
    old = _read_metadata(folder) if (folder / "metadata.json").exists() else {}
    runtime = target(_target_name(old))
    predictor = (predictor or LatencyPredictor(target=runtime.name)).fit(
        *_training_arrays(kernel_rows, model_rows, folder=folder))
    metadata = {
        "target": runtime.name,
        "provider": runtime.session_description,
        "threads": plan.threads if plan else old.get("threads", 1),
        "machine": old.get("machine") or runtime.machine(),
        "plan": asdict(plan) if plan else old.get("plan"),
        "measurements": {"kernels": len(kernel_rows), "candidates": len(model_rows),
                         "candidates_from_validation": sum(bool(r.get("source")) for r in model_rows),
                         # the families the fit has seen whole: the profile's models and any a validation added
                         "candidates_by_model": dict(collections.Counter(r["model"] for r in model_rows)),
                         "figure": "best_ms / level",
                         "session_levels": {r["source"]: r["level"] for r in model_rows if r["source"]}},
        "predictor": {"class": "LatencyPredictor",
                      "params": {k: v for k, v in vars(predictor).items() if not k.endswith("_")},
                      "composition_relative_error_cv": predictor.relative_error_,
                      "uncertainty_log_var": {"floor": predictor.uncertainty_[0],
                                              "per_tree_var": predictor.uncertainty_[1],
                                              "typical_kernel_var": predictor.typical_kernel_var_},
                      "stream_threshold_mb": predictor.stream_threshold_mb_},
        "versions": {"scikit-learn": sklearn.__version__, "autocompress": _autocompress_version()},
        "fitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    _write_cache(folder, predictor)
    return HardwareModel(predictor, metadata)


def recorded_plan(folder: Path) -> ProfilePlan | None:
    """The plan ``folder``'s metadata.json records, None for a new folder (or one from before
    plans were recorded). A profile run on an existing folder resumes this plan: starting from
    the defaults instead, ``profile --add-validation`` on a folder profiled with other models or
    sweeps would have measured the default models and recorded the default sweeps."""
    folder = Path(folder)
    if not (folder / "metadata.json").exists():
        return None
    plan = _read_metadata(folder).get("plan")
    try:
        return ProfilePlan.from_dict(plan) if plan else None
    except (TypeError, ValueError) as exc:
        raise AutocompressError(f"{folder / 'metadata.json'} records a plan this version cannot read ({exc}); fix its "
                                "\"plan\" entry, delete the entry to profile with the defaults, or profile into a new "
                                "--out") from exc


def load_hardware_model(folder: str | Path) -> HardwareModel:
    """Load ``folder``; warns (DifferentMachineWarning) when this machine is not the one measured."""
    folder = Path(folder)
    if not (folder / "metadata.json").exists():
        raise AutocompressError(f"{folder} is not a hardware model folder (no metadata.json); "
                                "pass a folder written by `autocompress profile`, e.g. hardware_models/ort-cpu-1t")
    metadata = _read_metadata(folder)
    predictor = _read_cache(folder)
    if predictor is None:
        log.info("%s: fitting the predictor from the CSV files (no usable predictor.joblib cache)", folder)
        params = {"target": _target_name(metadata)} | metadata.get("predictor", {}).get("params", {})
        predictor = LatencyPredictor(**params).fit(*_training_arrays(
            read_kernel_measurements(folder / "kernels.csv"), read_model_measurements(folder / "models.csv"),
            folder=folder))
        _write_cache(folder, predictor)
    _warn_if_other_machine(folder, metadata)  # after the errors: a folder that cannot be read says only that
    return HardwareModel(predictor, metadata)


def find_hardware_model(*, target_name: str = DEFAULT_TARGET, threads: int = 1, roots: list[Path] | None = None) -> Path:
    """The hardware model folder to use on this machine: among the folders under ``roots`` (by
    default ./hardware_models, then the ones shipped with autocompress) profiled for
    ``target_name`` with ``threads`` threads, one measured on this machine class (for ort-cpu:
    same CPU model, ISA and ONNX Runtime version).

    Why: latency is a property of the machine, not of the model alone. Our 2-core development
    machines come on two AMD EPYC generations, with and without AVX-512, and on an Intel Xeon with
    AMX; a hardware model profiled on one predicts another up to 23% off (README, "Machine
    classes"). When no folder matches, the nearest one is returned (fewest differences, the CPU
    model counting most), and loading it warns (DifferentMachineWarning) that it was measured
    elsewhere.

    Where the environment variable ``AUTOCOMPRESS_HARDWARE_MODEL`` names a folder (a path, or the
    name of a shipped one), the default search (``roots`` None) returns that folder instead: it
    pins ``auto`` for a whole run, its subprocesses and Ray workers included, so that a test suite
    or a fleet of machines predicts with one model whatever the host."""
    if roots is None and os.environ.get(PIN_VARIABLE):
        return _pinned_hardware_model(os.environ[PIN_VARIABLE])
    roots = [Path("hardware_models"), SHIPPED_MODELS] if roots is None else roots
    chosen = target(target_name)
    here = chosen.machine()
    found: dict[str, tuple[tuple, Path]] = {}
    for root in roots:
        for folder in sorted(root.glob("*/metadata.json")) if root.is_dir() else []:
            try:
                metadata = json.loads(folder.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not ours to judge here: load_hardware_model explains a broken folder
            if metadata.get("threads", 1) != threads or _target_name(metadata) != target_name:
                continue
            machine = metadata.get("machine", {})
            rank = (len(chosen.machine_differences(machine, here)), machine.get("cpu") != here.get("cpu"))
            found.setdefault(folder.parent.name, (rank, folder.parent))  # ./hardware_models wins a name clash
    if not found:
        raise AutocompressError(f"no hardware model for {threads} thread(s) of target {target_name} in "
                                f"{', '.join(map(str, roots))}; profile this machine first: autocompress profile "
                                f"--target {target_name} --threads {threads}")
    rank, folder = min(found.values(), key=lambda item: (item[0], item[1].name))
    log.info("hardware model %s (%s)", folder, "measured on this machine class" if rank[0] == 0 else
             "the nearest: none was measured on this machine class")
    return folder


def _pinned_hardware_model(name: str) -> Path:
    for folder in (Path(name), SHIPPED_MODELS / name):
        if (folder / "metadata.json").is_file():
            return folder
    shipped = ", ".join(sorted(p.parent.name for p in SHIPPED_MODELS.glob("*/metadata.json")))
    raise AutocompressError(f"{PIN_VARIABLE}={name!r} is not a hardware model folder; name one written by "
                            f"`autocompress profile`, or a shipped one ({shipped}), or unset it")


def _cache_folders(folder: Path) -> list[Path]:
    """Where a folder's fitted predictor is cached: beside its measurements, or, where that is
    read-only (an installed package), in the user's cache directory."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autocompress" / "hardware_models"
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return [folder, root / f"{folder.name}-{tag}"]


def _write_cache(folder: Path, predictor: LatencyPredictor) -> None:
    stamp = json.dumps({"scikit-learn": sklearn.__version__, "format_version": LatencyPredictor.format_version,
                        "measurements_sha256": _measurements_sha256(folder)})
    for cache in _cache_folders(folder):
        try:
            cache.mkdir(parents=True, exist_ok=True)
            joblib.dump(predictor, cache / "predictor.joblib", compress=3)
            (cache / "predictor.json").write_text(json.dumps(
                {"sha256": _sha256(cache / "predictor.joblib"), **json.loads(stamp)}) + "\n")
            return
        except OSError:
            continue  # read-only: try the next place
    log.info("%s: no writable place for the predictor cache; it is refit on each load", folder)


def _read_cache(folder: Path) -> LatencyPredictor | None:
    for cache in _cache_folders(folder):
        predictor = _read_cache_in(cache, folder)
        if predictor is not None:
            return predictor
    return None


def _read_cache_in(cache: Path, folder: Path) -> LatencyPredictor | None:
    pickled, stamp = cache / "predictor.joblib", cache / "predictor.json"
    try:
        expected = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not pickled.exists() or expected.get("scikit-learn") != sklearn.__version__ or \
            expected.get("format_version") != LatencyPredictor.format_version or \
            expected.get("measurements_sha256") != _measurements_sha256(folder) or \
            expected.get("sha256") != _sha256(pickled):
        return None
    return joblib.load(pickled)


def _measurements_sha256(folder: Path) -> dict:
    """What the cached predictor was fit on: a git pull or a profile run changes the CSV files."""
    return {name: _sha256(measurement_file(folder / name)) for name in ("kernels.csv", "models.csv")}


def _training_arrays(kernel_rows: list[dict], model_rows: list[dict], *, folder: Path | None = None):
    """The predictor's training data; ``folder``: where the rows were read, named in errors."""
    folder = Path(folder or "the hardware model folder")
    if not kernel_rows or not model_rows:
        raise AutocompressError(f"{folder} holds no measurements to fit (kernels.csv and models.csv need a row each); "
                                f"run `autocompress profile --out {folder}`, or restore the files from a copy")
    kernels = kernel_table([Kernel(**{f: r[f] for f in KERNEL_FIELDS}) for r in kernel_rows])
    kernel_ms = np.array([r["best_ms"] for r in kernel_rows])
    candidates = []
    for row in model_rows:
        try:
            candidates.append(kernel_table(_row_kernels(row)))
        except (ValueError, TypeError) as exc:  # a cut or hand-edited kernels cell
            raise AutocompressError(f"{folder / 'models.csv'}: the kernels column of a {row['model']} candidate at "
                                    f"input size {row['input_size']} does not parse ({type(exc).__name__}: {exc}); fix "
                                    "or delete that row") from None
    return kernels, kernel_ms, candidates, np.array([profile_level_ms(r) for r in model_rows])


def _row_kernels(row: dict) -> list[Kernel]:
    """The kernels of a models.csv row: its ``kernels`` column holds each one's KERNEL_FIELDS, in
    order, as JSON (``profiling._candidate_row`` writes it)."""
    return [Kernel(*k) for k in json.loads(row["kernels"])]


def _warn_if_other_machine(folder: Path, metadata: dict) -> None:
    measured_on = target(_target_name(metadata))
    differences = measured_on.machine_differences(metadata.get("machine", {}), measured_on.machine())
    if differences:
        warnings.warn(f"hardware model {folder} was measured on another machine (the profile's against this one: "
                      f"{'; '.join(differences)}); its predictions may be off here: run `autocompress profile` on "
                      "this machine",
                      DifferentMachineWarning, stacklevel=3)


def _target_name(metadata: dict) -> str:
    return metadata.get("target", DEFAULT_TARGET)  # folders from before targets name none: the default


def _read_metadata(folder: Path) -> dict:
    try:
        return json.loads((folder / "metadata.json").read_text())
    except json.JSONDecodeError as exc:
        raise AutocompressError(f"{folder / 'metadata.json'} is not valid JSON ({exc}); re-run "
                                "`autocompress profile` on that folder to rewrite it") from exc


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _autocompress_version() -> str:
    return __version__
