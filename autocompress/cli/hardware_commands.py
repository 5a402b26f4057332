"""The hardware-model commands: ``profile`` (measure a target, fit its predictor) and
``validate-predictor`` (time fresh candidates and score the predictions)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AutocompressError
from .arguments import _parse_shape

__all__ = ["_profile", "_profile_defaults", "_validate_predictor"]


def _profile_defaults():
    """The plan `profile` runs without options, so its help text quotes the real defaults."""
    from ..hardware.profile_plan import ProfilePlan

    return ProfilePlan()


def _profile(args) -> int:
    import dataclasses
    import time

    from ..hardware.profile_plan import ProfilePlan
    from ..hardware.profiling import add_validation_measurements, run_profile
    from ..hardware.store import fit_hardware_model, recorded_plan

    out = args.out or Path("hardware_models") / f"{args.target}-{args.threads or 1}t"
    overrides = {"threads": args.threads, "kernels": args.kernels, "heavy_kernels": args.heavy_kernels,
                 "candidates": args.candidates, "light_candidates": args.light_candidates,
                 "sweeps": args.sweeps, "max_minutes": args.max_minutes,
                 "models": tuple(args.models) if args.models else None}
    try:
        plan = dataclasses.replace(recorded_plan(out) or ProfilePlan(), **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise AutocompressError(f"{exc}; fix --kernels, --heavy-kernels, --candidates, --light-candidates, "
                                f"--sweeps or --max-minutes") from exc
    started = time.monotonic()
    for report in args.add_validation:
        added, level = add_validation_measurements(report, out)
        print(f"{out}: {added} candidates timed by {report} added to models.csv; "
              + (f"its host ran at {level:.3f}x the profile's level, which the fit takes out" if level is not None
                 else "it re-timed no profiled candidates, so its host's level is taken as the profile's"))
    kernels, candidates = run_profile(plan, out)
    hardware = fit_hardware_model(out, plan=plan)
    print(f"{out}: {len(kernels)} kernels and {len(candidates)} candidates measured; predictor fitted "
          f"(whole-candidate error, cross-validated: {100 * hardware.predictor.relative_error_:.1f}% RMS) "
          f"in {(time.monotonic() - started) / 60:.1f} min")
    print(f"check it: autocompress validate-predictor {out} --model resnet18 --input-shape 1,3,32,32")
    return 0


def _validate_predictor(args) -> int:
    from ..hardware.store import load_hardware_model
    from ..hardware.validation import validate
    from ..hardware.validation_report import write_plot, write_report
    from ..train.models import check_model_runs, example_input, resolve_model

    shapes = [_parse_shape(s) for s in (args.input_shape or ["1,3,32,32"])]
    for shape in shapes:
        if not (len(shape) == 4 and shape[:2] == (1, 3) and shape[2] == shape[3] or len(shape) == 2 and shape[0] == 1):
            raise AutocompressError(f"--input-shape {','.join(map(str, shape))} is not supported; "
                                    "validation draws image models at 1,3,H,W with H = W, text models at 1,TOKENS")
    for spec in args.model:  # a typo fails here, not after the hardware model's predictor is fitted
        for shape in shapes:  # built at each size, as validation builds it (a ViT is built for one)
            model = resolve_model(spec, image_size=shape[-1])
            check_model_runs(model, example_input(model, shape), spec=spec, size_name="--input-shape",
                             needs=lambda size: f"give --input-shape 1,3,{size},{size}")
    hardware = load_hardware_model(args.hardware_model)
    report = validate(hardware, args.hardware_model, args.model, [s[-1] for s in shapes], samples=args.samples,
                      seed=args.seed, threads=hardware.metadata.get("threads", 1),
                      sweeps=args.sweeps or (hardware.metadata.get("plan") or {}).get("sweeps", 2), cells=args.cells,
                      tight_ms=args.tight)
    out = args.out or args.hardware_model / "validation"
    plan, measured = hardware.metadata.get("plan") or {}, hardware.metadata.get("measurements") or {}
    fitted_on = list(dict.fromkeys([*plan.get("models", []), *measured.get("candidates_by_model", {})]))
    write_report(report, out, profiled_models=fitted_on, machine=hardware.metadata.get("machine", {}))
    write_plot(report, out / "validation.png")
    summary = report.to_dict()
    if args.json:
        print(json.dumps({k: summary[k] for k in ("hardware_model", "overall", "by_model", "host_speed_vs_profile",
                                                  "at_host_level")}, indent=2))
        return 0
    print(f"{'models @ input':32s} {'n':>4s}  {'within 10%':>10s} {'RMSPE':>7s} {'Spearman':>8s}   "
          f"{'MACs proxy: within 10%':>22s} {'RMSPE':>7s} {'Spearman':>8s}")
    for name, figures in list(summary["by_model"].items()) + [("all", summary["overall"])]:
        p, m = figures["predictor"], figures["macs_proxy"]
        print(f"{name:32s} {figures['candidates']:4d}  {100 * p['within_10pct']:9.1f}% {p['rmspe']:6.1f}% "
              f"{p['spearman']:8.3f}   {100 * m['within_10pct']:21.1f}% {m['rmspe']:6.1f}% {m['spearman']:8.3f}")
    speed = summary["host_speed_vs_profile"]
    if speed:
        print(f"host speed against the profile: {speed['candidates']} of its candidates re-timed here measured "
              f"{speed['median_ratio']:.3f}x their profiled figures (median; figures not adjusted)")
    leveled = summary["at_host_level"]
    if leveled:
        print(f"at the host's level (--calibrate-host): predictions scaled by {leveled['ratio']:.3f}, "
              f"{100 * leveled['overall']['within_10pct']:.1f}% within 10%, RMSPE {leveled['overall']['rmspe']:.1f}%")
    # At the host's level where there is one: a raw deviation on a host 14% faster than the profile
    # misses almost every measurement whatever its width.
    coverage = (leveled or {}).get("uncertainty_coverage") or summary["overall"]["uncertainty_coverage"]
    if coverage:
        where = " at the host's level" if (leveled or {}).get("uncertainty_coverage") else ""
        print(f"stated uncertainty{where}: {100 * coverage['1sd']:.0f}% of measurements within 1 predicted standard "
              f"deviation (68% if exact), {100 * coverage['2sd']:.0f}% within 2 (95%)")
    if report.skipped_trained_on:
        print(f"{report.skipped_trained_on} drawn candidates left out: {args.hardware_model} was fit on them "
              "(draw fresh ones with another --seed)")
    print(f"written: {out / 'validation.md'}, {out / 'validation.json'}, {out / 'validation.png'}")
    return 0
