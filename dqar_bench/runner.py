"""The runner: one path for every case, baseline included.

The model is built once per suite. For each case the registry turns names into parts,
the adapter installs them (nothing for the untouched baseline), warmup calls run, then
`repeats` timed calls per seed; outputs of the first timed repeat are compared with the
baseline's, and one record is appended to disk before the next case starts. A case that
raises is recorded as failed and the suite goes on.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench import __version__
from dqar_bench.adapters import adapter_for
from dqar_bench.errors import DqarError, ModelError
from dqar_bench.models import LoadedModel, load_model
from dqar_bench.parts import build_part
from dqar_bench.plugins import Registry, get_registry
from dqar_bench.quality import paired
from dqar_bench.records import RunDir
from dqar_bench.sampling import make_scheduler, sample
from dqar_bench.strategy import Strategy
from dqar_bench.suite import Case, Suite
from dqar_bench.table import render_markdown, results_frame
from dqar_bench.timing import timed

Progress = Callable[[str], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DqarError(f"device '{name}' was asked for but no CUDA device is available; set 'device: cpu' or 'auto'")
    return device


def build_strategy(case: Case, registry: Registry, probe_queries: int = 16) -> Strategy | None:
    """The case's parts, built and wired; None for the untouched model."""
    if case.untouched:
        return None
    parts = {kind: build_part(registry.get(kind, spec.name).cls, spec.params) for kind, spec in case.parts.items()}
    return Strategy(parts["scheduler"], parts["gate"], parts["cache"], parts["quantizer"], probe_queries)  # type: ignore[arg-type]


def default_output_dir(suite: Suite) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / f"{suite.name}-{stamp}"


def run_suite(
    suite: Suite,
    output: str | Path | None = None,
    resume: bool = False,
    registry: Registry | None = None,
    progress: Progress = print,
) -> RunDir:
    """Run every case of `suite` into a run directory and write its tables."""
    registry = registry or get_registry()
    run = RunDir(output or default_output_dir(suite))
    if not resume and run.records():
        raise DqarError(f"{run.path} already holds records; pass --resume {run.path} to continue it, or choose another --output")
    done = run.finished() if resume else {}
    device = resolve_device(suite.device)
    dtype = getattr(torch, suite.dtype)
    model = load_model(suite.model, device, dtype, suite.allow_download)
    _check_labels(suite, model)
    run.write_text("suite.yaml", suite.path.read_text())

    baseline_outputs = run.load_outputs(suite.baseline) if suite.baseline in done else None
    cases = suite.ordered_cases()
    for index, case in enumerate(cases, 1):
        if case.name in done:
            progress(f"[{index}/{len(cases)}] {case.name}: already recorded, skipped")
            continue
        progress(f"[{index}/{len(cases)}] {case.name} ...")
        record, outputs = run_case(suite, case, model, device, registry, baseline_outputs)
        if outputs is not None:
            run.save_outputs(case.name, outputs)
            if case.name == suite.baseline:
                baseline_outputs = outputs
        run.append(record)
        progress(_summary(record))

    frame = results_frame(run.records(), suite.baseline)
    run.write_text("results.csv", frame.to_csv(index=False))
    table = render_markdown(frame)
    run.write_text("table.md", f"# {suite.name}\n\n{table}\n")
    progress("")
    progress(table)
    progress(f"\nresults: {run.path}")
    return run


def run_case(
    suite: Suite,
    case: Case,
    model: LoadedModel,
    device: torch.device,
    registry: Registry,
    baseline_outputs: dict[int, torch.Tensor] | None,
) -> tuple[dict[str, Any], dict[int, torch.Tensor] | None]:
    """Measure one case; never raises for a failure of the case itself."""
    record: dict[str, Any] = {
        "suite": suite.name,
        "case": case.name,
        "parts": {kind: {"name": s.name, "params": s.params} for kind, s in case.parts.items()},
        "model": suite.model,
        "sampler": suite.sampler,
        "steps": suite.steps,
        "guidance_scale": suite.guidance_scale,
        "batch": len(suite.class_labels),
        "seeds": suite.seeds,
        "device": str(device),
        "dtype": suite.dtype,
        "suite_hash": suite.content_hash,
        "dqar_bench": __version__,
        "started": _now(),
    }
    try:
        strategy = build_strategy(case, registry, suite.probe_queries)
        outputs, samples = _measure(suite, model, device, strategy)
    except Exception as exc:  # one broken case must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0], traceback=traceback.format_exc(), finished=_now())
        return record, None
    batch = len(suite.class_labels)
    median = statistics.median(samples)
    record.update(
        status="ok",
        latency_s=samples,
        median_s=median,
        per_image_s=median / batch,
        reused=strategy.stats.reused if strategy else 0,
        evaluations=strategy.stats.evaluations if strategy else 0,
        reuse_ratio=strategy.stats.reuse_ratio if strategy else 0.0,
        cache_bytes=strategy.stats.peak_cache_bytes if strategy else 0,
        quality=_quality(outputs, baseline_outputs),
        finished=_now(),
    )
    return record, outputs


def _measure(
    suite: Suite, model: LoadedModel, device: torch.device, strategy: Strategy | None
) -> tuple[dict[int, torch.Tensor], list[float]]:
    scheduler = make_scheduler(suite.sampler, model.scheduler_config)

    def call(seed: int) -> torch.Tensor:
        return sample(
            model.transformer, scheduler, suite.class_labels, seed, suite.steps,
            suite.guidance_scale, model.null_class, observer=strategy,
        )

    with adapter_for(model.transformer).install(model.transformer, strategy):
        for i in range(suite.warmup):
            call(suite.seeds[i % len(suite.seeds)])
        if strategy is not None:
            strategy.reset_stats()  # count the timed calls only
        outputs: dict[int, torch.Tensor] = {}
        samples: list[float] = []
        for repeat in range(suite.repeats):
            for seed in suite.seeds:
                seconds, latents = timed(lambda: call(seed), device)
                samples.append(seconds)
                if repeat == 0:
                    outputs[seed] = latents.detach().float().cpu()
    return outputs, samples


def _quality(outputs: dict[int, torch.Tensor], baseline: dict[int, torch.Tensor] | None) -> dict[str, Any] | None:
    if baseline is None or set(baseline) != set(outputs):
        return None
    seeds = sorted(outputs)
    return paired(torch.cat([outputs[s] for s in seeds]), torch.cat([baseline[s] for s in seeds]))


def _check_labels(suite: Suite, model: LoadedModel) -> None:
    bad = [c for c in suite.class_labels if not 0 <= c < model.null_class]
    if bad:
        raise ModelError(f"{suite.path}: field 'class_labels': {bad[0]} is out of range for model '{suite.model}' (0..{model.null_class - 1})")


def _summary(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"    failed: {record['error']}"
    return f"    median {record['median_s'] * 1000:.1f} ms/call, reuse {record['reuse_ratio']:.1%}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
