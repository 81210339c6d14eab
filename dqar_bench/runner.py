"""The runner: one path for every case, baseline included.

The model is built once per suite. For each case the registry turns names into parts,
the adapter installs them (nothing for the untouched baseline), warmup calls run, then
`repeats` timed calls per seed; outputs of the first timed repeat are compared with the
baseline's, and one record is appended to disk before the next case starts. A case that
raises is recorded as failed and the suite goes on.

Measurement (`dqar_bench.measure`): every timed call's raw time is kept (CUDA events on a
GPU, perf_counter on the CPU, per-step marks inside), the first warmup call is the cold
figure, memory peaks and energy are taken around the case, the environment once per run.
"""

from __future__ import annotations

import datetime as _dt
import json
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench import __version__
from dqar_bench.adapters import adapter_for
from dqar_bench.conditioning import condition_for
from dqar_bench.errors import DqarError, ModelError
from dqar_bench.execution import Execution, unsupported
from dqar_bench.measure import environment
from dqar_bench.measure.classify import class_accuracy
from dqar_bench.measure.fidelity import to_uint8
from dqar_bench.measure.instruments import Instruments, build_instruments, generate_images
from dqar_bench.measure.meter import CaseMeter
from dqar_bench.measure.plot import plot_run
from dqar_bench.measure.progress import Progress as ProgressBar
from dqar_bench.measure.stats import Measurement
from dqar_bench.models import LoadedModel, load_model
from dqar_bench.parts import build_part
from dqar_bench.plugins import Registry, get_registry
from dqar_bench.quality import compare_outputs
from dqar_bench.records import RunDir
from dqar_bench.report import keep_previews, report_run
from dqar_bench.sampling import Condition, denoise, labels_condition, make_scheduler
from dqar_bench.strategy import Strategy
from dqar_bench.suite import Case, Suite
from dqar_bench.table import render_markdown, results_frame
from dqar_bench.timing import CallTimer

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
    if device.type == "cpu":
        torch.set_num_threads(suite.threads)
    dtype = getattr(torch, suite.dtype)
    model = load_model(suite.model, device, dtype, suite.allow_download)
    check_labels(suite, model)
    run.write_text("suite.yaml", suite.path.read_text())
    kit = build_instruments(suite.quality, model.vae, model.latent_channels, device)
    kit.environment = environment.collect(device, suite.dtype, suite.seeds, suite.content_hash, model.transformer)
    run.write_text("environment.json", json.dumps(kit.environment, indent=1) + "\n")

    condition = condition_for(suite, model, device, dtype)
    cases = suite.ordered_cases()
    kit.reference_file = run.path / "outputs" / "baseline-fid-images.safetensors"
    if cases[0].name in done:  # the first baseline's images are the FID reference
        kit.resume_reference()

    # one baseline per execution mode; each case is compared with the one in its mode
    baseline_outputs = {c.name: run.load_outputs(c.name) for c in cases if suite.is_baseline(c) and c.name in done}
    batch = suite.batch
    per_case = kit.calls_per_case(suite.warmup, suite.repeats, len(suite.seeds), batch)
    kit.progress = ProgressBar(per_case * sum(c.name not in done for c in cases))
    say = kit.progress.wrap(progress)
    try:
        for index, case in enumerate(cases, 1):
            if case.name in done:
                say(f"[{index}/{len(cases)}] {case.name}: already recorded, skipped")
                continue
            say(f"[{index}/{len(cases)}] {case.name} ...")
            kit.progress.case(case.name)
            reference = baseline_outputs.get(suite.baseline_for(case))
            record, outputs = run_case(suite, case, model, device, registry, reference, kit, condition)
            if outputs is not None:
                run.save_outputs(case.name, outputs)
                if suite.is_baseline(case):
                    baseline_outputs[case.name] = outputs
            run.append(record)
            if outputs is not None:
                keep_previews(run, case.name, outputs, kit.decode, say)  # decoded pictures for the report (VAE models)
            say(_summary(record))
    finally:
        kit.progress.close()

    frame = results_frame(run.records(), suite.baseline)
    run.write_text("results.csv", frame.to_csv(index=False))
    table = render_markdown(frame)
    plot = plot_run(frame, run.path / "pareto.png", suite.name)
    run.write_text("table.md", f"# {suite.name}\n\n{table}\n")
    progress("")
    progress(table)
    progress(f"\nplot: {plot}")
    progress(f"report: {report_run(run)}")
    progress(f"results: {run.path}")
    return run


def run_case(
    suite: Suite,
    case: Case,
    model: LoadedModel,
    device: torch.device,
    registry: Registry,
    baseline_outputs: dict[int, torch.Tensor] | None,
    kit: Instruments | None = None,
    condition: Condition | None = None,
) -> tuple[dict[str, Any], dict[int, torch.Tensor] | None]:
    """Measure one case; never raises for a failure of the case itself.

    A case whose execution mode it cannot run in (no CUDA for `cudagraph`, a part that
    says so) is recorded as `unsupported` with the reason, and nothing is run.
    """
    kit = kit or Instruments(device=device)
    condition = condition or labels_condition(suite.class_labels, model.null_class, device)
    record: dict[str, Any] = {
        "suite": suite.name,
        "case": case.name,
        "description": case.description,
        "parts": {kind: {"name": s.name, "params": s.params} for kind, s in case.parts.items()},
        "model": suite.model,
        "sampler": suite.sampler,
        "steps": suite.steps,
        "guidance_scale": suite.guidance_scale,
        "batch": suite.batch,
        "cond_len": condition.cond_len,
        "execution_mode": case.execution,
        "baseline_case": suite.baseline_for(case),
        "seeds": suite.seeds,
        "device": str(device),
        "dtype": suite.dtype,
        "suite_hash": suite.content_hash,
        "dqar_bench": __version__,
        "environment": kit.environment,
        "started": _now(),
    }
    try:
        strategy = build_strategy(case, registry, suite.probe_queries)
        reason = unsupported(case.execution, device, strategy)
        if reason:
            record.update(status="unsupported", error=f"unsupported in {case.execution}: {reason}", finished=_now())
            return record, None
        measured = _measure(suite, model, device, strategy, kit, case.execution, condition)
        outputs, samples = measured.pop("outputs"), measured.pop("latency_s")
        quality = _quality(outputs, baseline_outputs, kit)
        fidelity = _fidelity(measured.pop("fid_images"), suite.is_baseline(case), kit)
        accuracy = _class_accuracy(outputs, condition, kit)
    except Exception as exc:  # one broken case must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0], traceback=traceback.format_exc(), finished=_now())
        return record, None
    batch = suite.batch
    latency = Measurement.of(samples)
    record.update(
        status="ok",
        latency_s=samples,
        median_s=latency.median,
        per_image_s=latency.median / batch,
        latency=latency.summary(),
        **measured,
        quality=quality,
        fidelity=fidelity,
        class_accuracy=accuracy,
        finished=_now(),
    )
    return record, outputs


def _measure(
    suite: Suite,
    model: LoadedModel,
    device: torch.device,
    strategy: Strategy | None,
    kit: Instruments,
    mode: str = "eager",
    condition: Condition | None = None,
) -> dict[str, Any]:
    """Warmup (the first call is the cold figure), timed repeats, then images for FID."""
    scheduler = make_scheduler(suite.sampler, model.scheduler_config)
    condition = condition or labels_condition(suite.class_labels, model.null_class, device)
    execution = Execution(mode, model.transformer, strategy, suite.execution_options)
    forward = None

    def call(seed: int, labels: list[int] | None = None) -> torch.Tensor:
        given = condition
        if labels is not None and model.family == "dit":  # FID draws its own labels; captions stay the suite's
            given = labels_condition(labels, model.null_class, device)
        return denoise(model.transformer, scheduler, given, seed, suite.steps, suite.guidance_scale, strategy, forward)

    meter = CaseMeter(device, suite.nvml_interval_s)
    # per-step marks are a forward pre-hook: eager only (a compiled or replayed forward runs no hooks)
    timer = CallTimer(device, model.transformer if suite.per_step and mode == "eager" else None)
    outputs: dict[int, torch.Tensor] = {}
    samples: list[float] = []
    steps: list[list[float]] = []
    warmup: list[float] = []
    with adapter_for(model.transformer).install(model.transformer, strategy), execution as forward, meter:
        with timer:
            # a strong mode warms up twice: the first call meets empty caches and unallocated
            # buffers, so the second still compiles / captures its first step once
            for i in range(suite.warmup if mode == "eager" else max(suite.warmup, 2)):
                timing, _ = timer.time(lambda: call(suite.seeds[i % len(suite.seeds)]))
                warmup.append(timing.seconds)
                kit.progress.tick()
            if strategy is not None:
                strategy.reset_stats()  # count the timed calls only
            with meter.timed_section():
                for repeat in range(suite.repeats):
                    for seed in suite.seeds:
                        timing, latents = timer.time(lambda: call(seed))
                        samples.append(timing.seconds)
                        steps.append(timing.steps)
                        if repeat == 0:
                            outputs[seed] = latents.detach().float().cpu()
                        kit.progress.tick()
            stats = strategy.stats if strategy is not None else None
            reuse = {  # of the timed calls only: taken before any image for FID is made
                "reused": stats.reused if stats else 0,
                "evaluations": stats.evaluations if stats else 0,
                "reuse_ratio": stats.reuse_ratio if stats else 0.0,
                "cache_bytes": stats.peak_cache_bytes if stats else 0,
                "reuse_map": stats.reuse_map if stats else None,  # [step][block]: timed calls that reused there
                "reuse_map_calls": stats.calls if stats else 0,
            }
        fid_images = None
        if kit.fid_images:
            fid_images = generate_images(call, kit.fid_images, suite.batch, model.null_class, kit)
    images = suite.repeats * len(suite.seeds) * suite.batch
    return {
        "execution": execution.report(),
        "outputs": outputs,
        "latency_s": samples,
        "timer": timer.method,
        "cold_s": warmup[0] if warmup else None,
        "warmup_s": warmup,
        "step_s": steps if suite.per_step and mode == "eager" else None,
        **meter.report(images),
        **reuse,
        "fid_images": fid_images,
    }


def _quality(outputs: dict[int, torch.Tensor], baseline: dict[int, torch.Tensor] | None, kit: Instruments) -> dict[str, Any] | None:
    if baseline is None or set(baseline) != set(outputs):
        return None
    seeds = sorted(outputs)
    return compare_outputs(
        torch.cat([outputs[s] for s in seeds]), torch.cat([baseline[s] for s in seeds]), kit.decode, kit.lpips, kit.lpips_note
    )


def _class_accuracy(outputs: dict[int, torch.Tensor], condition: Condition, kit: Instruments) -> float | None:
    """Class accuracy of the case's own outputs (every seed, first timed repeat)."""
    labels = condition.inputs.get("class_labels")
    if kit.quality.classifier is None or labels is None:
        return None
    seeds = sorted(outputs)
    images = to_uint8(kit.to_images(torch.cat([outputs[s] for s in seeds])))
    labels = labels.detach().cpu().repeat(len(seeds))
    return class_accuracy(kit.quality.classifier, images, labels)


def _fidelity(images: torch.Tensor | None, is_baseline: bool, kit: Instruments) -> dict[str, Any] | None:
    """FID / IS / KID of the case's images; the baseline's images may be the reference itself."""
    if images is None:
        return None
    if is_baseline and kit.quality.reference == "baseline" and kit.fidelity is None:
        kit.adopt_reference(images)  # the first baseline's; a baseline in another mode is scored against it
        return {"n": int(images.shape[0]), "reference": "this case (the baseline)", "feature_extractor": kit.quality.feature_extractor}
    if kit.fidelity is None:
        return {"n": int(images.shape[0]), "note": "no reference: the baseline did not finish"}
    return kit.fidelity.score(images)


def check_labels(suite: Suite, model: LoadedModel) -> None:
    """Class labels must exist in the model, or its label embedding fails deep inside the forward."""
    if model.family != "dit":
        return
    bad = [c for c in suite.class_labels if not 0 <= c < model.null_class]
    if bad:
        raise ModelError(f"{suite.path}: field 'class_labels': {bad[0]} is out of range for model '{suite.model}' (0..{model.null_class - 1})")


def _summary(record: dict[str, Any]) -> str:
    if record["status"] == "unsupported":
        return f"    {record['error']}"
    if record["status"] != "ok":
        return f"    failed: {record['error']}"
    noise = record["latency"]["noise"]
    return f"    median {record['median_s'] * 1000:.1f} ms/call ({noise}), reuse {record['reuse_ratio']:.1%}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
