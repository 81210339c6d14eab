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
    output = args.resume or args.output
    run = run_suite(suite, output, resume=args.resume is not None)
    failed = [r["case"] for r in run.records() if r.get("status") != "ok"]
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


def _missing() -> object:
    import dataclasses

    return dataclasses.MISSING


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plugins": cmd_plugins,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dqar-bench", description="Benchmark training-free DiT acceleration strategies.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and print its comparison table")
    run.add_argument("suite", help="suite YAML file")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", help="run directory (default results/runs/<suite>-<time>/)")
    where.add_argument("--resume", metavar="DIR", help="continue a run directory, skipping cases already recorded")
    validate = sub.add_parser("validate", help="check a suite file without running it")
    validate.add_argument("suite")
    sub.add_parser("plugins", help="list every installed strategy part")
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
