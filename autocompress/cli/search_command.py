"""The ``search`` command: the main job, from flags to a finished (or resumed) search.

Every default is the library's (``search.settings``, ``search.problem.ProblemSpec``,
``train.finetune.DistillationConfig``): the command line with only a model, a data set and a budget
runs the same search as ``run_search(SearchSettings(problem=..., budget=..., out=...))``."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import AutocompressError
from ..search.problem import ProblemSpec
from ..search.settings import CALIBRATE_MODEL, EXECUTORS, GUIDES, ExecutionSettings, LatencySettings, SearchSettings
from ..search.study import SAMPLERS
from ..train.finetune import DistillationConfig
from .arguments import _count, _positive, add_baseline_flags, add_model_arguments
from .space_flags import add_space_flags, space_options_from_args

__all__ = ["add_search_command", "search_settings_from_args"]


def default_of(cls, name: str):
    """The library's default of the field ``name`` of the dataclass ``cls``."""
    field = next(f for f in fields(cls) if f.name == name)
    return field.default if field.default is not MISSING else field.default_factory()


def add_search_command(sub) -> None:
    search = sub.add_parser("search", help="joint multi-objective search under a latency budget (the main job)")
    add_model_arguments(search, optional=True)
    spec_default = lambda name: default_of(ProblemSpec, name)  # noqa: E731
    search.add_argument("--dataset", default=spec_default("dataset"), help="digits (default), mnist, fashion-mnist, "
                        "cifar10, cifar100 (from --data-root) or imagefolder:PATH (train/, val/, test/ or one folder "
                        "per class)")
    search.add_argument("--data-root", default=spec_default("data_root"), help="where the standard data sets' files "
                        "are, in torchvision's layout (default ./data; fashion-mnist also from Debian's "
                        "dataset-fashion-mnist)")
    search.add_argument("--augment", dest="augment", action="store_true", default=spec_default("augment"),
                        help="random crops (and flips) on the training images (default: on for all but digits)")
    search.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    search.add_argument("--task", default=None, metavar="MODULE:FUNCTION",
                        help="your own problem: a function returning an autocompress Task (model, data, score); "
                        "replaces MODEL and --dataset")
    search.add_argument("--input-size", type=_count, default=spec_default("input_size"),
                        help=f"image side length (default {spec_default('input_size')})")
    search.add_argument("--hardware", default=spec_default("hardware"),
                        help="hardware model folder, or auto (default): the one under hardware_models/ measured on a "
                        "machine like this one (same CPU, ISA and ONNX Runtime); recorded in search.json as the "
                        "folder it picked")
    add_baseline_flags(search)
    add_space_flags(search)

    search.add_argument("--budget", required=True, help="latency budget: 5ms, or 0.5x of the original's latency "
                        "measured here at the start")
    search.add_argument("--out", required=True, type=Path,
                        help="folder for the study, the baseline and the results; an existing search there resumes")
    searched = lambda name: default_of(SearchSettings, name)  # noqa: E731
    search.add_argument("--trials", type=_positive, default=searched("trials"),
                        help="fine-tuned trials to reach, those already in the study included; proposals told over "
                        f"the budget at once do not count (default {searched('trials')})")
    search.add_argument("--timeout", type=float, default=searched("timeout_s"),
                        help="stop starting trials after this many seconds")
    search.add_argument("--guide", "--repair-by", dest="guide", default=searched("guide"), choices=GUIDES,
                        help="what steers repair and seeds: the share of MACs a decision touches (macs); the damage "
                        "each decision does alone, measured first, which also seeds allocations under the budget "
                        "(sensitivity: writes sensitivity/ in --out); or those and an accuracy model learned from the "
                        f"trials, which skips fine-tunes it is sure cannot reach the front (surrogate) (default "
                        f"{searched('guide')})")
    search.add_argument("--finetune-steps", type=_positive, default=DistillationConfig().steps,
                        help=f"distillation steps per trial (default {DistillationConfig().steps})")
    search.add_argument("--sampler", default=searched("sampler"), choices=SAMPLERS,
                        help=f"default {searched('sampler')}")
    search.add_argument("--seed", type=_count, default=searched("seed"),
                        help=f"sampler seed (default {searched('seed')})")
    search.add_argument("--no-warm-start", action="store_true", help="do not seed the study with uniform policies")

    latency = LatencySettings()
    search.add_argument("--calibrate-model", choices=CALIBRATE_MODEL, default=latency.calibrate_model,
                        help="time a few dozen of the model's own candidates first and correct the hardware model "
                             "for it (auto: under a relative budget, and on a model it was not profiled on; "
                             f"default {latency.calibrate_model})")
    search.add_argument("--calibrate-host", action="store_true", default=latency.calibrate_host,
                        help="first time 16 of the hardware model's measured candidates (about a minute) and predict "
                        "at this host's speed now, not the profile's: the level a shared host drifts by between "
                        "sessions (a resumed search keeps the level it started with)")
    search.add_argument("--measure-near-budget", type=float, default=latency.measure_near_budget, metavar="SHARE",
                        help="time a candidate predicted within this share of the budget before its fine-tune and "
                             f"use the measurement (default {latency.measure_near_budget:g}; 0: never; local "
                             "executor only)")
    search.add_argument("--budget-confidence", type=float, default=latency.budget_confidence, metavar="P",
                        help="a predicted candidate meets the budget when it does with probability P, given the "
                             f"prediction's uncertainty (default {latency.budget_confidence}; 0.5: its predicted "
                             "mean does)")

    execution = ExecutionSettings()
    search.add_argument("--executor", default=execution.executor, choices=EXECUTORS,
                        help=f"where fine-tunes run: in this process (local) or on Ray workers (default "
                        f"{execution.executor})")
    search.add_argument("--workers", type=_positive, default=execution.workers,
                        help="Ray workers (default: the cluster's CPUs / --cpus-per-trial)")
    search.add_argument("--ray-address", default=execution.ray_address,
                        help="join an existing Ray cluster (auto, or HOST:PORT); default: start Ray locally")
    search.add_argument("--cpus-per-trial", type=_positive, default=execution.cpus_per_trial,
                        help=f"CPUs each Ray worker declares (default {execution.cpus_per_trial})")
    search.add_argument("--gpus-per-trial", type=float, default=execution.gpus_per_trial,
                        help="GPUs each Ray worker declares (default: 1 when the cluster has GPUs, else 0)")
    search.add_argument("--storage", default=execution.storage, help="Optuna storage: a URL "
                        "(postgresql+psycopg2://..., sqlite:///...) or a journal file path (default: study.journal in "
                        "--out)")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.set_defaults(run=_search)


def search_settings_from_args(args) -> SearchSettings:
    """The SearchSettings the flags describe (the Task they name kept in ``task``)."""
    from ..train.task import load_task

    if (args.model is None) == (args.task is None):
        raise AutocompressError("give a MODEL (with --dataset) or --task MODULE:FUNCTION, not both and not neither; "
                                "`autocompress search --help` lists the options")
    common = dict(weights=str(args.weights) if args.weights else None, num_classes=args.num_classes,
                  train_steps=args.train_steps, train_time_cap_s=args.train_time_cap, hardware=args.hardware,
                  space=space_options_from_args(args), search_space=args.space, augment=args.augment)
    task = load_task(args.task) if args.task else None
    if task is not None:
        spec = ProblemSpec.for_task(task, task=args.task, **common)
    else:
        spec = ProblemSpec(model=args.model, dataset=args.dataset, input_size=args.input_size,
                           data_root=args.data_root, **common)
    return SearchSettings(
        problem=spec, task=task, budget=args.budget, out=args.out, trials=args.trials, timeout_s=args.timeout,
        guide=args.guide, finetune=DistillationConfig(steps=args.finetune_steps), sampler=args.sampler,
        seed=args.seed, warm_start=not args.no_warm_start,
        latency=LatencySettings(calibrate_model=args.calibrate_model, calibrate_host=args.calibrate_host,
                                measure_near_budget=args.measure_near_budget,
                                budget_confidence=args.budget_confidence),
        execution=ExecutionSettings(executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                                    cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                    storage=args.storage))


def _search(args) -> int:
    from ..search.pareto import summary_table
    from ..search.budget import MEASURED_MARGIN
    from ..search.run import run_search

    settings = search_settings_from_args(args)
    outcome = run_search(settings, progress=not args.quiet)
    print(summary_table(outcome.front, budget_ms=outcome.budget_ms, baseline=outcome.baseline))
    print("written: " + ", ".join(str(p) for p in outcome.files.values()))
    timed = outcome.near_budget or {}
    if timed.get("measurements"):
        print(f"near the budget: {timed['measurements']} candidates timed; the predictions missed them by "
              f"{timed['median_miss_before']:.1%} (median) before the correction by their neighbours, "
              f"{timed['median_miss_after']:.1%} after")
    best = outcome.best
    if best is not None:
        # what the export will pick: it judges as the search did (measured: the margin under the budget)
        how = "measured" if best.latency_measured else "predicted"
        print(f"export: `autocompress export {args.out} --best-under {args.budget} --out {args.out / 'export'}` "
              f"times the front near the budget and takes the most accurate point that measures "
              f"{MEASURED_MARGIN:.0%} under it; the search expects trial {best.number} ({how} {best.latency_ms:.3f} "
              f"ms, {best.accuracy:.2%}). `--trial {best.number}` exports that one without timing.")
    return 130 if outcome.interrupted else 0
