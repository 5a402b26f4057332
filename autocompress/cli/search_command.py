"""The ``search`` command: the main job, from flags to a finished (or resumed) search."""

from __future__ import annotations

from ..errors import AutocompressError
from .space_flags import space_options_from_args

__all__ = ["_search"]


def _chosen_hardware(name: str) -> str:
    """The hardware model folder a search records: "auto" is resolved here, once, so that resuming
    and exporting use the folder this search started with."""
    from ..hardware.store import AUTO, find_hardware_model

    if name != AUTO:
        return name
    return str(find_hardware_model())  # recorded in search.json; a bad-input error stays one line


def _search(args) -> int:
    from ..train.finetune import DistillationConfig
    from ..search.pareto import summary_table
    from ..search.problem import ProblemSpec
    from ..search.run import SearchSettings, run_search
    from ..train.task import load_task

    if (args.model is None) == (args.task is None):
        raise AutocompressError("give a MODEL (with --dataset) or --task MODULE:FUNCTION, not both and not neither; "
                                "`autocompress search --help` lists the options")
    task = load_task(args.task) if args.task else None
    spec = ProblemSpec(model=task.model_name if task else args.model, dataset=task.name if task else args.dataset,
                       input_size=task.input_size or int(task.example_input().shape[-1]) if task else args.input_size,
                       weights=str(args.weights) if args.weights else None, num_classes=args.num_classes,
                       train_steps=args.train_steps, train_time_cap_s=args.train_time_cap,
                       hardware=_chosen_hardware(args.hardware),
                       space=space_options_from_args(args), search_space=args.space, data_root=args.data_root,
                       augment=args.augment, task=args.task)
    settings = SearchSettings(problem=spec, task=task, budget=args.budget, out=args.out, trials=args.trials,
                              timeout_s=args.timeout, sampler=args.sampler, seed=args.seed, storage=args.storage,
                              guide=args.guide, calibrate_model=args.calibrate_model,
                              measure_near_budget=args.measure_near_budget, budget_confidence=args.budget_confidence,
                              finetune=DistillationConfig(steps=args.finetune_steps),
                              warm_start=not args.no_warm_start,
                              executor="ray" if args.ray_address else args.executor, workers=args.workers,
                              ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial, calibrate_host=args.calibrate_host)
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
        print(f"export the best under budget: autocompress export {args.out} --trial {best.number} "
              f"--out {args.out / 'export'}")
    return 130 if outcome.interrupted else 0
