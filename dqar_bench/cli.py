"""The `dqar-bench` command.

User mistakes (`DqarError`) print one line and exit with status 2; there is no traceback
for them. Each subcommand is one small function; add a new one to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from dqar_bench.core.errors import DqarError

MAX_RANK_TIMEOUT_S = 7 * 24 * 3600
"""A week: longer than any collective should wait, and within what torch's timers take (inf overflows them)."""
MAX_CHECK_STEPS = 1000
"""`check-part --steps` at most: the tiny models' schedules have 1000 training steps."""


def cmd_run(args: argparse.Namespace) -> int:
    """A suite file of several models runs one suite per model, into `<output>/<model>/`."""

    from dqar_bench.config.suite import load_suites
    from dqar_bench.core.errors import ModelError
    from dqar_bench.model.models import offline_problem
    from dqar_bench.runs.distributed.launch import launch, without_nproc

    if args.rank_timeout is not None and not 0 < args.rank_timeout <= MAX_RANK_TIMEOUT_S:  # inf and nan too: a timer takes neither
        raise DqarError(f"--rank-timeout must be a positive number of seconds up to {MAX_RANK_TIMEOUT_S} (a week), got {args.rank_timeout:g}")
    suites = load_suites(args.suite, inception_weights=args.inception_weights)  # a bad suite is one line here, not one per rank
    for suite in suites:
        problem = offline_problem(suite.model, suite.allow_download, suite.pipeline)
        if problem:
            raise ModelError(f"{suite.path}: field '{'model.pipeline' if suite.pipeline else 'model'}': {problem}")  # before any run directory is made
    if args.rerun_changed and args.resume is None:
        raise DqarError("--rerun-changed reruns the changed cases of a run being resumed; give --resume DIR too")
    def output_of(suite: Any) -> Path | None:
        output = args.resume or args.output
        return Path(output) / suite.model if output is not None and len(suites) > 1 else output

    if args.nproc is not None:
        outputs = [Path(o) for o in map(output_of, suites) if o is not None]
        return launch(args.nproc, without_nproc(args.argv), max(s.threads for s in suites), outputs)
    from dqar_bench.core.world import DEFAULT_TIMEOUT_S, init_world
    from dqar_bench.runs.runner import run_suite

    world = init_world(suites[0].device, args.rank_timeout or DEFAULT_TIMEOUT_S)  # a plain process is a World of one
    status = 0
    try:
        for suite in suites:
            output = output_of(suite)
            run = run_suite(suite, output, resume=args.resume is not None, rerun_changed=args.rerun_changed, world=world, shard_cases=args.shard == "cases")
            if run is None:  # not rank 0: rank 0 reports
                continue
            latest = run.latest()  # a case that failed and then finished on resume counts as finished
            failed = [c.name for c in suite.cases if c.name in latest and latest[c.name].status not in ("ok", "unsupported")]
            if failed:
                print(f"{len(failed)} case(s) failed: {', '.join(failed)} (errors in {run.records_path})", file=sys.stderr)
                status = 1
    finally:
        world.close()
    return status


def cmd_validate(args: argparse.Namespace) -> int:
    from dqar_bench.config.suite import load_suites
    from dqar_bench.model.models import offline_problem

    for suite in load_suites(args.suite, inception_weights=args.inception_weights):
        print(f"{args.suite}: ok: suite '{suite.name}', {len(suite.cases)} cases, model {suite.model}, baseline '{suite.baseline}'")
        problem = offline_problem(suite.model, suite.allow_download, suite.pipeline)
        if problem:
            print(f"note: `run` needs the model on this machine: {problem}")
            print("note: the weights files its quality metrics name are checked once the model is on this machine")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from dqar_bench.config.suite import load_suites
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.views.plan import plan_suite, render_plan

    registry = get_registry()
    suites = load_suites(args.suite, registry)
    for index, suite in enumerate(suites):  # one plan per model of the file
        geo, plans = plan_suite(suite, registry)
        print(("\n" if index else "") + render_plan(suite, geo, plans))
    return 0


def cmd_check_part(args: argparse.Namespace) -> int:
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.testing import check_part, find_part

    if not 1 <= args.steps <= MAX_CHECK_STEPS:
        raise DqarError(f"--steps: {args.steps} is not a step count the tiny models can sample; give 1 to {MAX_CHECK_STEPS} (their schedules have 1000 training steps)")
    registry = get_registry()
    cls = find_part(registry, args.name, args.kind)
    results = check_part(cls, registry=registry, steps=args.steps, models=args.model)
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.ok]
    kind = cls.KIND
    print(f"{kind} '{cls.PLUGIN_NAME}': {len(results) - len(failed)} of {len(results)} checks passed")
    return 1 if failed else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from dqar_bench.core.parts import KINDS
    from dqar_bench.core.plugins import get_registry

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


def cmd_models(args: argparse.Namespace) -> int:
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.model.families import FAMILIES, GUIDANCE_MODES
    from dqar_bench.model.models import BUILTIN_FAMILIES, BUILTIN_MODELS, TINY_MODELS
    from dqar_bench.model.sampling import prediction_type

    caches = [get_registry().get("cache", name).cls for name in get_registry().names("cache")]
    print("families:")
    for f in FAMILIES:
        refused = [f"{c.PLUGIN_NAME}: refused ({f.refusal(c).rsplit('; ', 1)[-1]})" for c in caches if f.refusal(c)]  # type: ignore[union-attr]
        print(f"  {f.name:<14} {f.description}")
        print(f"      classes: {', '.join(f.classes)}; pipeline: {f.pipeline}")
        print(f"      blocks: {' + '.join(b.attr for b in f.blocks)}, returning {' and '.join('(' + ', '.join(b.returns) + ')' for b in f.blocks)}")
        print(f"      self-attention: {', '.join(f.attention)}; cross-attention: {', '.join(f.cross_attention) or 'none'}; feed-forward: {', '.join(f.mlp)}")
        print(f"      cache targets: attention, attention+mlp, {'cross-attention, ' if f.cross_attention else ''}block{'; ' + '; '.join(refused) if refused else ''}")
        print(f"      conditioning: {f.conditioning}; guidance: {f.guidance} ({GUIDANCE_MODES[f.guidance]})")
        print(f"      prediction: {prediction_type(dict(f.scheduler))}; default sampler: {f.sampler}; tiny model: {TINY_MODELS.get(f.name, '-')}")
        print(f"      block 0's modulation (TeaCache): {_modulation(f)}")
        print(f"      diffusers hooks: {_hooks(f)}")
    print("built-in models:")
    for name, build in BUILTIN_MODELS.items():
        doc = " ".join((build.__doc__ or "").split()).split(". ")[0].rstrip(".")
        print(f"  {name:<20} {BUILTIN_FAMILIES.get(name, 'dit'):<14} {doc}")
    print("any other name: a diffusers checkpoint id or folder of one of these families (model_index.json picks the family)")
    return 0


def _modulation(family: Any) -> str:
    from dqar_bench.model.families import Modulation

    m = family.modulation
    if not isinstance(m, Modulation):
        return f"none ({m})"
    return f"{m.module} ({m.recipe}); rescale: {m.source}"


def _hooks(family: Any) -> str:
    """Which of diffusers' hooks run on the family at their defaults, and why the others do not."""
    from dqar_bench.strategy.diffusers_hooks import HOOKS, refusal

    runs = [name for name in HOOKS if refusal(name, family) is None]
    refused = [f"{name}: refused ({refusal(name, family)})" for name in HOOKS if refusal(name, family) is not None]
    return "; ".join([", ".join(runs)] + refused if runs else refused)


def cmd_trace(args: argparse.Namespace) -> int:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.distributed.launch import single_process_only
    from dqar_bench.runs.trace import trace_suite

    single_process_only("dqar-bench trace")
    suite = load_suite(args.suite)
    options = {k: v for k, v in (("tolerance", args.tolerance), ("max_samples", args.max_samples)) if v is not None}
    summary = trace_suite(suite, args.output, args.case, **options)
    print(f"{summary.describe()}\ntraces: {args.output}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dqar_bench.config.suite import load_suites
    from dqar_bench.runs.calibrate import CalibrateOptions, calibrate, check_targets, report_unreachable
    from dqar_bench.runs.distributed.launch import single_process_only

    single_process_only("dqar-bench calibrate")
    targets = tuple(args.target_reuse)
    check_targets(targets)  # before the suite is read: a bad flag is the first thing to say
    suites = load_suites(args.suite, calibrating=True)
    output = Path(args.output) if args.output else None
    if args.fits_only and args.case:
        raise DqarError("--fits-only searches no threshold, so --case has nothing to choose; give one or the other")
    result = calibrate(suites, CalibrateOptions(output, targets, args.seeds, args.case, thresholds=not args.fits_only))
    return report_unreachable(result)


def cmd_train_policy(args: argparse.Namespace) -> int:
    import dataclasses

    from dqar_bench.strategy.policy.model import save_policy
    from dqar_bench.strategy.policy.train import read_traces, train_policy

    output = Path(args.output)
    if output.exists() and not args.force:
        raise DqarError(f"--output {output} already exists; pass --force to overwrite it, or choose another file")
    if output.is_dir():
        raise DqarError(f"--output {output} is a folder; give the .safetensors file to write")
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

    from dqar_bench.core.files import write_atomic
    from dqar_bench.views import compare

    if args.json and (Path(args.json).is_dir() or not Path(args.json).parent.is_dir()):
        why = "is a directory" if Path(args.json).is_dir() else f"its folder {Path(args.json).parent} does not exist"
        raise DqarError(f"--json {args.json}: {why}; give the path of a file to write in an existing folder")
    comparison = compare.compare_runs(
        args.base,
        args.new,
        max_slowdown=compare.parse_fraction(args.max_slowdown),
        alpha=args.alpha,
        max_quality_drop=compare.parse_limit(args.max_quality_drop, "--max-quality-drop", percent=False),
        max_fid_rise=compare.parse_rise(args.max_fid_rise),
        max_accuracy_drop=compare.parse_limit(args.max_accuracy_drop, "--max-accuracy-drop"),
        strict=args.strict,
    )
    print(compare.render_comparison(comparison))
    if args.json:
        write_atomic(Path(args.json), json.dumps(compare.benchmark_entries(compare.read_records(args.new)), indent=1) + "\n")
        print(f"\nbenchmark JSON (customSmallerIsBetter): {args.json}")
    return comparison.exit_status


def cmd_report(args: argparse.Namespace) -> int:
    from dqar_bench.views.report import write_report

    if args.max_seeds < 1:
        raise DqarError(f"--max-seeds: {args.max_seeds} shows no images; give 1 or more")
    if args.output is not None:
        _report_folder(Path(args.output).expanduser())
    print(f"report: {write_report(args.runs, args.output, args.max_seeds)}")
    return 0


def _report_folder(output: Path) -> None:
    """Make the folder `report -o` writes into before the page is rendered (long, for a large
    run), so that a path that cannot hold it is one line first, not a traceback in mkdir after."""
    if output.is_dir():
        raise DqarError(f"report -o {output}: not written: it is a folder; give the path of an .html file to write")
    folder = output.parent
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise DqarError(f"report -o {output}: not written: {blocking} is a file, not a folder; choose a path in a writable folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder belongs, a folder not writable
        raise DqarError(f"report -o {output}: not written: the folder {folder} cannot be made ({exc.strerror or exc}); choose a path in a writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DqarError(f"report -o {output}: not written: the folder {folder} is not writable; choose a path in a writable folder")


def cmd_fid_stats(args: argparse.Namespace) -> int:
    import numpy as np

    from dqar_bench.measure.fid_folder import folder_statistics
    from dqar_bench.runs.suite_model import resolve_device

    path = folder_statistics(args.folder, args.feature_extractor, args.inception_weights, resolve_device(args.device), args.output)
    with np.load(path) as stats:
        print(f"{path}: FID statistics (mu, sigma) of {int(stats['num_images'])} images by '{stats['feature_extractor']}'")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """The suite file's JSON Schema, with the installed parts' names, for editors."""
    import json

    from dqar_bench.config.schema import suite_schema
    from dqar_bench.core.plugins import get_registry

    print(json.dumps(suite_schema(get_registry()), indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.distributed.launch import single_process_only
    from dqar_bench.runs.tune import Floor, TuneOptions, tune

    single_process_only("dqar-bench tune")
    suite = load_suite(args.suite)
    floors = [Floor(metric, value) for metric in ("psnr", "ssim", "accuracy", "clip", "lpips")
              for value in getattr(args, f"{'max' if metric == 'lpips' else 'min'}_{metric}") or []]
    options = TuneOptions(args.case, args.trials, args.output, args.objective, args.quality, args.space, floors, args.seeds, args.sampler_seed)
    try:
        tune(suite, options)
    except KeyboardInterrupt:  # tune said where its trials are kept
        return 130
    return 0


def _missing() -> object:
    import dataclasses

    return dataclasses.MISSING


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plugins": cmd_plugins,
    "plan": cmd_plan,
    "check-part": cmd_check_part,
    "models": cmd_models,
    "trace": cmd_trace,
    "train-policy": cmd_train_policy,
    "calibrate": cmd_calibrate,
    "compare": cmd_compare,
    "report": cmd_report,
    "fid-stats": cmd_fid_stats,
    "schema": cmd_schema,
    "tune": cmd_tune,
}


def parser() -> argparse.ArgumentParser:
    from dqar_bench import __version__

    p = argparse.ArgumentParser(prog="dqar-bench", description="Benchmark training-free DiT acceleration strategies.")
    p.add_argument("--version", action="version", version=f"dqar-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and print its comparison table")
    run.add_argument("suite", help="suite YAML file")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", help="run directory (default results/runs/<suite>-<time>/)")
    where.add_argument("--resume", metavar="DIR", help="continue a run directory, skipping cases already recorded with the same content")
    run.add_argument("--rerun-changed", action="store_true", help="with --resume: rerun the cases whose definition changed since they were recorded")
    run.add_argument("--inception-weights", metavar="PATH", help="local Inception weights file for FID / IS / KID (overrides quality.inception_weights)")
    run.add_argument("--nproc", type=int, metavar="N", help="run as N ranks on this machine under torch.distributed.run (torchrun --standalone)")
    run.add_argument("--shard", choices=("cases",), help="under several ranks: spread the cases over the ranks (each runs its own, beside every baseline) instead of splitting each case's images")
    run.add_argument("--rank-timeout", type=float, metavar="SECONDS", help="under several ranks: how long a rank waits for the others before it names the one that hung (default 1800)")
    validate = sub.add_parser("validate", help="check a suite file without running it")
    validate.add_argument("suite")
    validate.add_argument("--inception-weights", metavar="PATH", help="check with this Inception weights file, as `run --inception-weights` would use it")
    sub.add_parser("plugins", help="list every installed strategy part")
    sub.add_parser("models", help="list every model family and built-in model, and what each supports")
    plan = sub.add_parser("plan", help="print each case's reuse pattern for the suite's model and steps, without weights")
    plan.add_argument("suite", help="suite YAML file")
    check = sub.add_parser("check-part", help="run the conformance checks of dqar_bench.testing on an installed part")
    check.add_argument("name", help="the part's registry name (see `dqar-bench plugins`)")
    check.add_argument("--kind", choices=("scheduler", "gate", "cache", "quantizer"), help="its kind, where the name is taken in several")
    check.add_argument("--steps", type=int, default=3, help="sampling steps per call on the tiny models (default 3)")
    check.add_argument("--model", action="append", metavar="NAME", help="check on this tiny model only (repeatable; default: the tiny model of every family)")
    compare = sub.add_parser(
        "compare",
        help="compare two runs per case; exit 0 clean, 1 on a regression, 3 when only inconclusive (a CI gate)",
        description="Exit status: 0 clean, 1 regression, 2 user error, 3 some cases inconclusive (noisy or too few rounds) and none regressed.",
    )
    compare.add_argument("base", help="run directory of the reference run")
    compare.add_argument("new", help="run directory of the run under test")
    compare.add_argument("--max-slowdown", default="5%", help="fall of a case's speedup (against its run's own baseline) that counts, if significant (default 5%%)")
    compare.add_argument("--alpha", type=float, default=0.01, help="significance level of the Mann-Whitney U test on per-round speedups (default 0.01)")
    compare.add_argument("--max-quality-drop", default="1", metavar="DB", help="PSNR drop (dB, against each run's baseline) that counts as a regression (default 1; 'off' to skip)")
    compare.add_argument("--max-fid-rise", default="50%", help="FID rise that counts as a regression: relative (50%%, the default) or absolute (10); 'off' to skip")
    compare.add_argument("--max-accuracy-drop", default="2%", metavar="FRACTION", help="class accuracy drop that counts as a regression (default 2%%; 'off' to skip)")
    compare.add_argument("--strict", action="store_true", help="any change in what a case is (parts, parameters, steps, seeds, versions) is a regression")
    compare.add_argument("--json", metavar="PATH", help="write the new run as github-action-benchmark customSmallerIsBetter JSON")
    report = sub.add_parser("report", help="write the HTML report of a run, or one report comparing several runs (with the Pareto front of any `tune` folder)")
    report.add_argument("runs", nargs="+", metavar="DIR",
                        help="run directories (each compared with its own baseline) and `dqar-bench tune` folders (or directories holding one as tune/)")
    report.add_argument("--output", "-o", metavar="FILE", help="HTML file to write (default DIR/report.html for one directory, ./report.html for several)")
    report.add_argument("--max-seeds", type=int, default=4, help="seeds whose images are shown (default 4)")
    stats = sub.add_parser("fid-stats", help="FID statistics (mu, sigma) of an image folder, cached next to it, for quality.fid.reference_stats")
    stats.add_argument("folder", help="folder of .png / .jpg images (searched deep)")
    stats.add_argument("--output", "-o", help="statistics file to write (default FOLDER.fid-EXTRACTOR.npz next to the folder)")
    stats.add_argument("--feature-extractor", default="inception-v3-compat", help="torch-fidelity feature extractor (default inception-v3-compat)")
    stats.add_argument("--inception-weights", metavar="PATH", help="local weights file of the feature extractor")
    stats.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    trace = sub.add_parser("trace", help="measure where single reuses are safe, as training data for the policy gate")
    trace.add_argument("suite", help="suite YAML file (its cases that use a cache are traced)")
    trace.add_argument("--output", "-o", required=True, help="trace file to write (JSON lines; must not exist)")
    trace.add_argument("--case", action="append", help="trace this case only (repeatable)")
    trace.add_argument("--tolerance", type=float, help="relative L2 change of the final latents a safe reuse may cause (default 0.001)")
    trace.add_argument("--max-samples", type=int, help="trace at most this many (step, block) candidates per sampling call, drawn at random")
    cal = sub.add_parser("calibrate", help="measure the model's signals and each case's threshold for a target reuse, into a calibration file")
    cal.add_argument("suite", help="suite YAML file (its `{calibrated: X}` parameters need not resolve yet)")
    cal.add_argument("--output", "-o", help="calibration file to write (JSON; its other models' entries are kept); default: the suite's `calibration:`, else results/calibration/<suite>.json")
    cal.add_argument("--target-reuse", type=float, nargs="+", default=[0.3, 0.5, 0.7], metavar="R", help="reuse shares in (0, 1) to find thresholds for (default 0.3 0.5 0.7)")
    cal.add_argument("--seeds", type=int, nargs="+", help="calibration seeds (default: as many as the suite has, after its largest; never the measured ones)")
    cal.add_argument("--case", action="append", help="calibrate this case's threshold only (repeatable; default: every case whose gate has one)")
    cal.add_argument("--fits-only", action="store_true", help="record the signals and fit MagCache's and TeaCache's settings, search no threshold (one call per seed)")
    train = sub.add_parser("train-policy", help="train the policy gate's MLP on a trace file")
    train.add_argument("traces", help="trace file from `dqar-bench trace`")
    train.add_argument("--output", "-o", required=True, help="policy .safetensors file to write (must not exist, unless --force)")
    train.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    train.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths (default 64 32)")
    train.add_argument("--seed", type=int, help="seed of the split and the initial weights (default 0)")
    train.add_argument("--val-fraction", type=float, help="share of sampling calls held out for validation (default 0.2)")
    train.add_argument("--max-epochs", type=int, help="at most this many epochs (default 500)")
    train.add_argument("--patience", type=int, help="stop after this many epochs without a better validation loss (default 30)")
    sub.add_parser("schema", help="print the suite file's JSON Schema (dqar-bench schema > suite.schema.json), for editors")
    tune = sub.add_parser("tune", help="search a case's parameters for the speed / quality Pareto front (Optuna NSGA-II; extra [tune])")
    tune.add_argument("suite", help="suite YAML file")
    tune.add_argument("--case", required=True, help="the case whose parameters are searched")
    tune.add_argument("--trials", type=int, default=20, help="trials in all, those of a resumed folder included (default 20)")
    tune.add_argument("--output", "-o", help="folder of trials.csv, pareto.png and tuned.yaml; run again with it to resume (default results/runs/<suite>-<time>/tune)")
    tune.add_argument("--objective", default="flops", help="speed: flops (FLOP speedup, deterministic; the default) or time (timed speedup, for a GPU)")
    tune.add_argument("--quality", help="psnr (default), ssim, lpips, accuracy or clip: one the suite measures")
    tune.add_argument("--space", help="the parameters searched, e.g. 'gate.threshold=0.1:0.9,gate.every=1:6' (default: the ranges the parts declare)")
    for metric, what in (("psnr", "dB"), ("ssim", "SSIM"), ("accuracy", "class accuracy, 0..1"), ("clip", "CLIP score")):
        tune.add_argument(f"--min-{metric}", type=float, nargs="+", metavar="X", help=f"quality floor(s) ({what}): the tuned suite holds the fastest setting for each")
    tune.add_argument("--max-lpips", type=float, nargs="+", metavar="X", help="LPIPS ceiling(s), as the floors")
    tune.add_argument("--seeds", type=int, nargs="+", help="seeds to tune on, apart from the suite's (which tuned.yaml measures); default: the suite's own")
    tune.add_argument("--sampler-seed", type=int, default=0, help="seed of Optuna's sampler (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except DqarError as exc:
        from dqar_bench.core.world import Echo

        if not isinstance(exc, Echo):  # another rank's error: that rank (rank 0) prints it
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished cases are kept in records.jsonl (continue with --resume DIR)", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (deprecation notes, hub warnings) would bury the one-line errors.

    Through environment variables, which the libraries read when a command first imports
    them: importing diffusers here to set its verbosity would cost every command seconds
    of start-up time, `--help` and `plugins` included.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for module in ("huggingface_hub", "diffusers", "torch_fidelity"):
        warnings.filterwarnings("ignore", module=module)


if __name__ == "__main__":
    sys.exit(main())
