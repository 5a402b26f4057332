"""autocompress: joint per-layer pruning, quantization, low-rank and NAS for PyTorch models."""

from .accounting import Footprint, footprint_of_candidate, footprint_of_model
from .analysis import ModelAnalysis, analyze
from .channel_groups import keep_channels
from .data import DatasetSplits, calibration_batches, load_dataset
from .errors import (
                     AutocompressError,
                     DatasetError,
                     ExportError,
                     InvalidCandidateError,
                     ModelResolutionError,
                     WeightsMismatchError,
)
from .export import ExportResult, export_and_compare, export_onnx, run_onnx
from .card import export_from_search
from .finetune import DistillationConfig
from .pareto import TrialRecord, load_front, pareto_front
from .problem import ProblemSpec, build_problem
from .search import SearchOutcome, SearchSettings, run_search
from .models import load_weights, resolve_model
from .space import Candidate, Space, SpaceOptions
from .techniques import apply_candidate, calibrate

__all__ = [
    "AutocompressError", "Candidate", "DatasetError", "DatasetSplits", "ExportError", "ExportResult",
    "Footprint", "InvalidCandidateError", "ModelAnalysis", "ModelResolutionError", "Space", "SpaceOptions",
    "WeightsMismatchError", "analyze", "apply_candidate", "calibrate", "calibration_batches",
    "export_and_compare", "export_onnx", "footprint_of_candidate", "footprint_of_model", "keep_channels",
    "load_dataset", "load_weights", "resolve_model", "run_onnx",
    # the search
    "DistillationConfig", "ProblemSpec", "SearchOutcome", "SearchSettings", "TrialRecord", "build_problem",
    "export_from_search", "load_front", "pareto_front", "run_search",
]

__version__ = "0.1.0"
