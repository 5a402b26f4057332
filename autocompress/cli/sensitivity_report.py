"""What `autocompress inspect MODEL --sensitivity FOLDER` shows: the damage each decision does alone.

The same measurement a search guided by sensitivities makes before its first trial (and the same
cache: given a search's folder and its model, data and steps, it reads the table that search left),
so what the user reads here is what the search ranks its repairs and allocations by.
"""

from __future__ import annotations

from ..errors import AutocompressError
from ..train.sensitivity import Sensitivities

__all__ = ["format_sensitivities", "inspect_sensitivity"]


def format_sensitivities(table: Sensitivities, *, folder, top: int) -> str:
    """The ``top`` variables whose most damaging value does the most harm, with every value's
    damage (KL divergence of the logits from the uncompressed model's, above the floor that
    BatchNorm recalibration alone leaves)."""
    by_variable = table.by_variable()
    ranked = sorted(by_variable.items(), key=lambda item: -max(item[1].values(), default=0.0))
    lines = [f"damage of each decision alone: KL divergence from the uncompressed model's logits, above the floor "
             f"{table.floor:.2e} that recalibration alone leaves ({len(table)} values of {len(by_variable)} variables)",
             f"{'variable':<48}{'worst':>10}  every value"]
    for variable, values in ranked[:top]:
        every = "  ".join(f"{value}: {damage:.2e}" for value, damage in values.items())
        lines.append(f"{variable[:47]:<48}{max(values.values(), default=0.0):>10.2e}  {every}")
    if len(ranked) > top:
        lines.append(f"... {len(ranked) - top} more variables (--top)")
    lines.append(f"table: {folder}/sensitivity/sensitivity.csv; chart: {folder}/sensitivity/sensitivity.png")
    return "\n".join(lines)


def inspect_sensitivity(args, shape: tuple[int, ...]) -> int:
    """Build the problem as a search would (the baseline trained or loaded, cached in the folder),
    measure or read its sensitivities and print the most damaging decisions."""
    from ..search.problem import ProblemSpec, build_problem
    from .space_flags import space_options_from_args

    if args.sensitivity.exists() and not args.sensitivity.is_dir():
        raise AutocompressError(f"--sensitivity {args.sensitivity} is a file, not a folder; choose another folder "
                                "(the file is left as it is)")
    spec = ProblemSpec(model=args.model, dataset=args.dataset, input_size=shape[-1],
                       weights=str(args.weights) if args.weights else None, num_classes=args.num_classes,
                       train_steps=args.train_steps, train_time_cap_s=args.train_time_cap, hardware=args.hardware,
                       space=space_options_from_args(args),
                       search_space=args.space)
    problem = build_problem(spec, cache_dir=args.sensitivity, progress=True)
    table = problem.with_sensitivities(args.sensitivity, progress=True).sensitivities
    print(format_sensitivities(table, folder=args.sensitivity, top=args.top))
    return 0
