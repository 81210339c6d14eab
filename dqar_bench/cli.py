"""The `dqar-bench` command.

User mistakes (`DqarError`) print one line and exit with status 2; there is no traceback
for them. Each subcommand is one small function; add a new one to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable

from dqar_bench.errors import DqarError


def cmd_run(args: argparse.Namespace) -> int:
    from dqar_bench.runner import run_suite
    from dqar_bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.inception_weights:
        import dataclasses

        suite = dataclasses.replace(suite, quality=dataclasses.replace(suite.quality, inception_weights=args.inception_weights))
    if args.rerun_changed and args.resume is None:
        raise DqarError("--rerun-changed reruns the changed cases of a run being resumed; give --resume DIR too")
    output = args.resume or args.output
    run = run_suite(suite, output, resume=args.resume is not None, rerun_changed=args.rerun_changed)
    latest = run.latest()  # a case that failed and then finished on resume counts as finished
    failed = [c.name for c in suite.cases if c.name in latest and latest[c.name].get("status") not in ("ok", "unsupported")]
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)} (errors in {run.records_path})", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from dqar_bench.suite import load_suite

    suite = load_suite(args.suite)
    print(f"{args.suite}: ok: suite '{suite.name}', {len(suite.cases)} cases, model {suite.model}, baseline '{suite.baseline}'")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from dqar_bench.parts import KINDS
    from dqar_bench.plugins import get_registry

    registry = get_registry()
    for kind in KINDS:
        print(f"{kind}s:")
        for name in registry.names(kind):
            info = registry.get(kind, name)
            print(f"  {name:<20} {info.cls.describe()}  [{info.distribution}]")
            for p in info.cls.parameters():
                default = "(required)" if p.default is _missing() else repr(p.default)
                extra = f"  {p.help}" if p.help else ""
                print(f"      {p.name}: {p.type_name} = {default}{extra}")
    if registry.problems:
        print("problems:")
        for problem in registry.problems:
            print(f"  {problem}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from dqar_bench.policy.trace import trace_suite
    from dqar_bench.suite import load_suite

    suite = load_suite(args.suite)
    options = {k: v for k, v in (("tolerance", args.tolerance), ("max_samples", args.max_samples)) if v is not None}
    summary = trace_suite(suite, args.output, args.case, **options)
    print(f"{summary.describe()}\ntraces: {args.output}")
    return 0


def cmd_train_policy(args: argparse.Namespace) -> int:
    import dataclasses

    from dqar_bench.policy.model import save_policy
    from dqar_bench.policy.train import read_traces, train_policy

    data = read_traces(args.traces)
    names = ("hidden", "seed", "val_fraction", "max_epochs", "patience")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    model, report = train_policy(data, **options)
    extra = {**dataclasses.asdict(report), **options, "traces": str(args.traces), "tolerance": data.tolerance}
    save_policy(model, args.output, extra=extra)
    print(f"{report.describe()}\npolicy: {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from dqar_bench.measure.compare import benchmark_entries, compare_runs, parse_fraction, read_records, render_comparison

    comparison = compare_runs(
        args.base, args.new, parse_fraction(args.max_slowdown), args.alpha, args.max_quality_drop, args.max_fid_rise,
        parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop") if args.max_accuracy_drop is not None else None,
    )
    print(render_comparison(comparison))
    if args.json:
        Path(args.json).write_text(json.dumps(benchmark_entries(read_records(args.new)), indent=1) + "\n")
        print(f"\nbenchmark JSON (customSmallerIsBetter): {args.json}")
    return 1 if comparison.regressed else 0


def _missing() -> object:
    import dataclasses

    return dataclasses.MISSING


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plugins": cmd_plugins,
    "trace": cmd_trace,
    "train-policy": cmd_train_policy,
    "compare": cmd_compare,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dqar-bench", description="Benchmark training-free DiT acceleration strategies.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and print its comparison table")
    run.add_argument("suite", help="suite YAML file")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", help="run directory (default results/runs/<suite>-<time>/)")
    where.add_argument("--resume", metavar="DIR", help="continue a run directory, skipping cases already recorded with the same content")
    run.add_argument("--rerun-changed", action="store_true", help="with --resume: rerun the cases whose definition changed since they were recorded")
    run.add_argument("--inception-weights", metavar="PATH", help="local Inception weights file for FID / IS / KID (overrides quality.inception_weights)")
    validate = sub.add_parser("validate", help="check a suite file without running it")
    validate.add_argument("suite")
    sub.add_parser("plugins", help="list every installed strategy part")
    compare = sub.add_parser("compare", help="compare two runs per case; exit 1 on a regression (a CI gate)")
    compare.add_argument("base", help="run directory of the reference run")
    compare.add_argument("new", help="run directory of the run under test")
    compare.add_argument("--max-slowdown", default="5%", help="slowdown of the median time per image that counts, if significant (default 5%%)")
    compare.add_argument("--alpha", type=float, default=0.01, help="significance level of the Mann-Whitney U test (default 0.01)")
    compare.add_argument("--max-quality-drop", type=float, metavar="DB", help="PSNR drop (dB, against each run's baseline) that counts as a regression")
    compare.add_argument("--max-fid-rise", type=float, help="FID rise that counts as a regression")
    compare.add_argument("--max-accuracy-drop", metavar="FRACTION", help="class accuracy drop that counts as a regression (e.g. 2%% or 0.02)")
    compare.add_argument("--json", metavar="PATH", help="write the new run as github-action-benchmark customSmallerIsBetter JSON")
    trace = sub.add_parser("trace", help="measure where single reuses are safe, as training data for the policy gate")
    trace.add_argument("suite", help="suite YAML file (its cases that use a cache are traced)")
    trace.add_argument("--output", "-o", required=True, help="trace file to write (JSON lines; must not exist)")
    trace.add_argument("--case", action="append", help="trace this case only (repeatable)")
    trace.add_argument("--tolerance", type=float, help="relative L2 change of the final latents a safe reuse may cause (default 0.001)")
    trace.add_argument("--max-samples", type=int, help="trace at most this many (step, block) candidates per sampling call, drawn at random")
    train = sub.add_parser("train-policy", help="train the policy gate's MLP on a trace file")
    train.add_argument("traces", help="trace file from `dqar-bench trace`")
    train.add_argument("--output", "-o", required=True, help="policy .safetensors file to write")
    train.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths (default 64 32)")
    train.add_argument("--seed", type=int, help="seed of the split and the initial weights (default 0)")
    train.add_argument("--val-fraction", type=float, help="share of sampling calls held out for validation (default 0.2)")
    train.add_argument("--max-epochs", type=int, help="at most this many epochs (default 500)")
    train.add_argument("--patience", type=int, help="stop after this many epochs without a better validation loss (default 30)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except DqarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished cases are kept in records.jsonl (continue with --resume DIR)", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (deprecation notes, hub warnings) would bury the one-line errors."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for module in ("huggingface_hub", "diffusers", "torch_fidelity"):
        warnings.filterwarnings("ignore", module=module)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
