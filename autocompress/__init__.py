"""autocompress: joint per-layer pruning, quantization, low-rank and NAS for PyTorch models."""

from .core.accounting import Footprint, footprint_of_candidate, footprint_of_model
from .core.analysis import ModelAnalysis, analyze
from .core.channel_groups import keep_channels
from .train.data import DatasetSplits, calibration_batches, load_dataset
from .errors import (
                     AutocompressError,
                     DatasetError,
                     ExportError,
                     InvalidCandidateError,
                     ModelResolutionError,
                     WeightsMismatchError,
)
from .hardware.onnx_export import ExportResult, export_and_compare, export_onnx, run_onnx
from .export.card import export_from_search
from .train.finetune import DistillationConfig
from .search.folder import SearchFolder, load_front
from .search.pareto import TrialRecord, pareto_front
from .search.problem import ProblemSpec, build_problem
from .search.run import ExecutionSettings, LatencySettings, SearchOutcome, SearchSettings, run_search
from .train.models import load_weights, resolve_model
from .train.scores import Score
from .train.task import Task
from .core.space import Candidate, Space, SpaceOptions
from .techniques import apply_candidate, calibrate

__all__ = [
    "AutocompressError", "Candidate", "DatasetError", "DatasetSplits", "ExportError", "ExportResult",
    "Footprint", "InvalidCandidateError", "ModelAnalysis", "ModelResolutionError", "Space", "SpaceOptions",
    "WeightsMismatchError", "analyze", "apply_candidate", "calibrate", "calibration_batches",
    "export_and_compare", "export_onnx", "footprint_of_candidate", "footprint_of_model", "keep_channels",
    "load_dataset", "load_weights", "resolve_model", "run_onnx",
    # the search
    "DistillationConfig", "ExecutionSettings", "LatencySettings", "ProblemSpec", "SearchOutcome", "SearchSettings",
    "TrialRecord", "build_problem",
    "export_from_search", "load_front", "pareto_front", "run_search",
    # your model, your data, your score
    "Score", "Task",
]

from .version import __version__  # noqa: E402
