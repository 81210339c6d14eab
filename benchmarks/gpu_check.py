"""The GPU check of issue 22: every CUDA path of the harness measured once, in one command.

A lent GPU comes for 15 minutes, all tries together, so this is prepared and tested on the
CPU (`--cpu-dry-run`: every step at toy sizes) and spends the device's time measuring.
Four rules shape it:

- **A timeout keeps what was done.** Each step runs in a child process of its own with its
  own time budget (`STEPS`); on overrun its whole process group is killed and the next step
  starts. A step appends its one summary line (OUT_DIR/summary.jsonl and summary.md,
  flushed and fsynced) the moment it ends; the suites it runs append their records case by
  case (timed blocked, so no case waits for a last round), and a step cut short is
  summarised from the records it left.
- **The whole run fits 7 minutes on an H200**, so that one rerun fits the device time: the
  budgets of steps 1-4 add up to 365 s, step 5 gets what is left of `TOTAL_S` (395 s; a step
  that ends early leaves its time to the next ones), and the wheels' install comes first
  (about 15 s). The sizes (`GPU`) are set from ANCHORS.md's H200 figures: an eager DiT-XL
  sampling call (4 images, CFG, 50 steps) about 1.4 s, a CUDA-graph one about 0.4 s.
- **What comes back from the device is four files.** The device tool returns at most 8 files
  from its $OUT, so with `--export DIR` the summary, the environment and one tarball of
  every run directory's records and tables (`gpu-check.tar.gz`, outputs left out) are
  copied there after every step, each replaced whole.
- **Every figure stands next to its goal** (`GOALS`, from issue 22); a goal missed is a
  finding, so the step's verdict says "missed", not "failed".

    benchmarks/gpu_check.sh OUT_DIR [--cpu-dry-run]       (installs the carried wheels, then this)
    python benchmarks/gpu_check.py OUT_DIR [--cpu-dry-run] [--only STEP ...] [--export DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOALS = {
    "timer": "CUDA-event timer within 2 % of wall clock with a sync and of the kernel's expected time; NVML device memory matches the allocator",
    "peers": "cudagraph baseline <= 0.10 s/image; full_dqar faster than the baseline in every mode; best strategy >= 2x over the cudagraph baseline, with its PSNR",
    "overhead": "harness overhead <= 2 %; <= 1 host sync per step",
    "flux": "attention's share of block time bounds attention reuse (about 46 % at 4096 tokens)",
    "dit-xl-256": "DQAR's ablations at DiT-XL scale: full_dqar faster than the baseline",
}


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    goal: str


STEPS: tuple[Step, ...] = (
    Step("timer", 20, GOALS["timer"]),
    Step("peers-eager", 90, GOALS["peers"]),
    Step("peers-cudagraph", 50, GOALS["peers"]),
    Step("peers-compile", 85, GOALS["peers"]),
    Step("overhead", 60, GOALS["overhead"]),
    Step("flux", 60, GOALS["flux"]),
    Step("dit-xl-256", 120, GOALS["dit-xl-256"]),
)
TOTAL_S = 395
"""Past this many seconds from the start no step starts, and the last one is cut to fit."""
MODES = ("eager", "cudagraph", "compile")
"""The order the peers run in: the cheap modes first, compilation last."""


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    dtype: str
    dit: str
    steps: int
    labels: list[int]
    repeats: int
    compile_backend: str
    compile_cases: list[str]
    max_graphs: int
    timer_target_s: float
    memory_bytes: int
    overhead_rounds: int
    decision_steps: int
    sync_steps: int
    flux: dict[str, Any]
    flux_latent: int
    flux_prompts: list[int]
    flux_steps: int
    budget_scale: float
    """Times every budget and `TOTAL_S`: a shared 2-core machine runs the toy sizes slower than an H200 the real ones."""


GPU = Sizes(
    device="cuda", dtype="float16", dit="dit-xl-2-256-random", steps=50, labels=[207, 360, 387, 974], repeats=3,
    compile_backend="inductor", compile_cases=["baseline", "full_dqar"], max_graphs=16,
    timer_target_s=0.05, memory_bytes=1 << 30, overhead_rounds=4, decision_steps=20, sync_steps=10,
    # FLUX.1's widths (24 heads x 128, T5 4096, CLIP 768, 64 packed channels), 2 dual + 4 single blocks of 19 + 38
    flux={"num_layers": 2, "num_single_layers": 4, "attention_head_dim": 128, "num_attention_heads": 24, "in_channels": 64,
              "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)},
    flux_latent=128, flux_prompts=[8, 30], flux_steps=20, budget_scale=1.0,
)
DRY = Sizes(
    device="cpu", dtype="float32", dit="dit-tiny", steps=4, labels=[1, 3], repeats=2,
    compile_backend="eager", compile_cases=["baseline", "full_dqar"], max_graphs=4,
    timer_target_s=0.02, memory_bytes=1 << 20, overhead_rounds=2, decision_steps=4, sync_steps=4,
    flux={"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2, "in_channels": 16,
              "joint_attention_dim": 32, "pooled_projection_dim": 16, "guidance_embeds": True, "axes_dims_rope": (4, 6, 6)},
    flux_latent=16, flux_prompts=[8, 12], flux_steps=4, budget_scale=4.0,
)


# --------------------------------------------------------------------------- the summary

class Summary:
    """One line per step, appended and synced at once: a killed run keeps every line it wrote."""

    def __init__(self, out: Path) -> None:
        self.jsonl = out / "summary.jsonl"
        self.md = out / "summary.md"

    def steps_written(self) -> set[str]:
        if not self.jsonl.exists():
            return set()
        names = set()
        for line in self.jsonl.read_text().splitlines():
            try:
                names.add(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
        return names

    def add(self, step: str, status: str, seconds: float, figures: dict[str, Any], text: str, goal: str, verdict: str) -> None:
        entry = {"step": step, "status": status, "seconds": round(seconds, 1), "figures": figures, "goal": goal, "verdict": verdict}
        _append(self.jsonl, json.dumps(entry, default=str) + "\n")
        _append(self.md, f"- **{step}** ({status}, {seconds:.0f} s): {text}  \n  goal: {goal}. **{verdict}**\n")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- step 1: timer truth

def step_timer(sizes: Sizes, out: Path) -> tuple[dict[str, Any], str, str]:
    """A spin of known length through the harness's CallTimer, against wall clock and the clock rate."""
    import torch

    from dqar_bench.measure import nvml as nv
    from dqar_bench.measure.timing import CallTimer

    device = torch.device(sizes.device)
    cuda = device.type == "cuda"
    nvdev, note = nv.open_device(device)
    target = sizes.timer_target_s
    sm_clock: Callable[[], float | None] = lambda: None
    if cuda:
        if nvdev is not None:
            sm_clock = lambda: float(nvdev.nvml.nvmlDeviceGetClockInfo(nvdev.handle, nvdev.nvml.NVML_CLOCK_SM))
        torch.cuda._sleep(10_000_000)  # the clocks ramp up before calibration
        mhz = sm_clock()  # read while the spin runs
        torch.cuda.synchronize()
        cycles = int(target * (mhz or 1500.0) * 1e6)  # no clock from NVML: a spin of about `target`, no expected time

        def kernel() -> None:
            torch.cuda._sleep(cycles)
    else:
        cycles = 0

        def kernel() -> None:
            time.sleep(target)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    timer_s, wall_s, expected_s, clocks = [], [], [], []
    with CallTimer(device) as timer:
        for _ in range(5):
            timing, _ = timer.time(kernel)
            timer_s.append(timing.seconds)
            sync()
            begin = time.perf_counter()
            kernel()
            now_mhz = sm_clock()  # read while the spin runs
            sync()
            wall_s.append(time.perf_counter() - begin)
            clocks.append(now_mhz)
            if not cuda or now_mhz:
                expected_s.append(cycles / (now_mhz * 1e6) if cuda else target)

    class Spinner(torch.nn.Module):
        def forward(self) -> None:
            kernel()

    spinner = Spinner()
    with CallTimer(device, spinner) as timer:  # the per-step events of the step hook
        timing, _ = timer.time(lambda: [spinner() for _ in range(4)])
    t, w = statistics.median(timer_s), statistics.median(wall_s)
    e = statistics.median(expected_s) if expected_s else None
    figures: dict[str, Any] = {
        "timer_method": "cuda-events" if cuda else "perf_counter",
        "target_ms": target * 1000, "timer_ms": t * 1000, "wall_ms": w * 1000, "expected_ms": e and e * 1000,
        "timer_vs_wall": t / w - 1, "timer_vs_expected": e and t / e - 1, "sm_clock_mhz": clocks,
        "step_ms": [s * 1000 for s in timing.steps], "steps_vs_total": sum(timing.steps) / timing.seconds - 1,
    }
    figures.update(_memory_check(torch, device, nvdev, note, sizes.memory_bytes))
    ok = abs(figures["timer_vs_wall"]) <= 0.02 and e is not None and abs(t / e - 1) <= 0.02
    expected = f"expected {e * 1000:.3f} ms ({t / e - 1:+.2%})" if e else "no expected time (NVML gave no SM clock)"
    text = (f"{target * 1000:.0f} ms spin ({figures['timer_method']}): timer {t * 1000:.3f} ms, wall+sync {w * 1000:.3f} ms "
            f"({figures['timer_vs_wall']:+.2%}), {expected}; "
            f"4 timed steps {', '.join(f'{s:.2f}' for s in figures['step_ms'])} ms; memory: {figures['memory_text']}")
    return figures, text, "met" if ok else "missed"


def _memory_check(torch: Any, device: Any, nvdev: Any, note: str | None, size: int) -> dict[str, Any]:
    """NVML's device memory against the allocator's peak, over one allocation of known size."""
    if nvdev is None:
        return {"memory_note": note, "memory_text": note}
    from dqar_bench.measure.nvml import NvmlSampler

    torch.cuda.synchronize()
    reserved0 = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    used0 = int(nvdev.nvml.nvmlDeviceGetMemoryInfo(nvdev.handle).used)
    sampler = NvmlSampler(nvdev)
    sampler.start()
    block = torch.ones(size, dtype=torch.uint8, device=device)
    torch.cuda.synchronize()
    time.sleep(0.1)
    report = sampler.stop()
    del block
    nvml_delta = (report["device_used_peak_bytes"] or used0) - used0
    reserved_delta = torch.cuda.max_memory_reserved(device) - reserved0
    mib = 2 ** 20
    figures = {
        "allocated_peak_mib": torch.cuda.max_memory_allocated(device) / mib, "reserved_delta_mib": reserved_delta / mib,
        "nvml_delta_mib": nvml_delta / mib, "nvml_vs_reserved": nvml_delta / reserved_delta - 1 if reserved_delta else None,
        "process_mib": report["process_peak_bytes"] / mib if report["process_peak_bytes"] else None,
        "process_note": report["process_note"], "nvml_samples": report["nvml_samples"],
    }
    figures["memory_text"] = (f"{size / mib:.0f} MiB block: allocator peak {figures['allocated_peak_mib']:.1f} MiB, reserved +{reserved_delta / mib:.1f} MiB, "
                              f"NVML device used +{nvml_delta / mib:.1f} MiB ({report['nvml_samples']} samples)")
    return figures


# --------------------------------------------------------------------------- step 2: peers in three modes

def derived_suite(source: str, out: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A suite of the repository, edited for this check and written next to its results."""
    import yaml

    data = yaml.safe_load((ROOT / source).read_text())
    edit(data)
    path = out / "suites" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# derived from {source} by benchmarks/gpu_check.py\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _dit_suite(data: dict[str, Any], sizes: Sizes, repeats: int) -> None:
    data.update(model=sizes.dit, device=sizes.device, dtype=sizes.dtype, class_labels=sizes.labels, seeds=[0],
                timing={"warmup": 1, "repeats": repeats, "order": "blocked"})
    data["sampler"]["steps"] = sizes.steps
    data.pop("quality", None)


def peers_suite(sizes: Sizes, out: Path, mode: str) -> Path:
    def edit(data: dict[str, Any]) -> None:
        _dit_suite(data, sizes, sizes.repeats if mode == "cudagraph" else 2)
        data["execution"] = mode
        data["compile"] = {"backend": sizes.compile_backend, "max_graphs": sizes.max_graphs}
        if mode == "compile" or sizes.device == "cpu" and mode == "cudagraph":  # every reuse pattern compiles once
            data["cases"] = [c for c in data["cases"] if c["name"] in sizes.compile_cases]  # the cases that answer the goals

    return derived_suite("suites/peers-dit-xl-256.yaml", out, f"peers-{mode}", edit)


def run_dir_rows(run: Path) -> list[dict[str, Any]]:
    """The table's rows of a run directory, from its records (a run cut short has no results.csv)."""
    from dqar_bench.measure.records import read_records
    from dqar_bench.views.table import results_frame

    records = read_records(run / "records.jsonl")
    if not records:
        return []
    frame = results_frame(records, "baseline")
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def case_text(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['case']} {row['status']}: {row.get('error') or ''}".strip()
    interval = f" [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]" if row.get("speedup_low") is not None else ""
    flop = f", FLOP {row['flop_speedup']:.2f}x" if row.get("flop_speedup") is not None else ""
    psnr = f", PSNR {row['psnr_db']:.1f} dB" if row.get("psnr_db") is not None else ""
    return f"{row['case']} {row['speedup']:.2f}x{interval}{flop}{psnr}"


def peers_figures(run: Path, mode: str) -> tuple[dict[str, Any], str, str]:
    rows = run_dir_rows(run)
    base = next((r for r in rows if r["case"] == "baseline" and r["status"] == "ok"), None)
    if base is None:
        why = next((case_text(r) for r in rows if r["case"] == "baseline"), "baseline not reached")
        return {"cases": rows}, f"{mode}: no baseline measured ({why}; {len(rows)} records)", "no figure"
    per_image = base["per_image_ms"] / 1000
    strategies = [r for r in rows if r["status"] == "ok" and r["case"] not in ("baseline", "harness_overhead")]
    dqar = next((r for r in strategies if r["case"] == "full_dqar"), None)
    best = max(strategies, key=lambda r: r["speedup"], default=None)
    figures = {"mode": mode, "baseline_s_per_image": per_image, "cases": rows,
               "full_dqar_speedup": dqar and dqar["speedup"], "best": best and best["case"], "best_speedup": best and best["speedup"]}
    verdicts = [f"full_dqar {'faster' if dqar['speedup'] > 1 else 'NOT faster'} ({case_text(dqar).removeprefix('full_dqar ')})"
                if dqar else "full_dqar not measured"]
    if mode == "cudagraph":
        verdicts.insert(0, f"baseline {'met' if per_image <= 0.10 else 'missed'} ({per_image:.3f} s/image)")
        if best:
            verdicts.append(f"best {best['case']} {'met' if best['speedup'] >= 2 else 'missed'} 2x ({best['speedup']:.2f}x, PSNR {best.get('psnr_db') or float('nan'):.1f} dB)")
    text = f"{mode}: baseline {per_image:.4f} s/image; " + "; ".join(case_text(r) for r in rows if r["case"] != "baseline")
    return figures, text, "; ".join(verdicts)


def fresh(run: Path) -> Path:
    """A step's run directory, emptied: a step rerun (`--only`) into the same OUT_DIR replaces its run."""
    shutil.rmtree(run, ignore_errors=True)
    return run


def step_peers(sizes: Sizes, out: Path, mode: str) -> tuple[dict[str, Any], str, str]:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.runner import run_suite

    run_suite(load_suite(peers_suite(sizes, out, mode)), fresh(out / f"peers-{mode}"))
    return peers_figures(out / f"peers-{mode}", mode)


# --------------------------------------------------------------------------- step 3: overhead

def _load_benchmark(name: str) -> Any:
    """A script of benchmarks/ (no package) as a module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def harness_vs_hand(sizes: Sizes, out: Path) -> dict[str, Any]:
    """benchmarks/harness_overhead.py, run through its own command line in this process (one
    import of torch less): the runner's baseline against a hand-written loop, eager."""
    argv = ["harness_overhead.py", "--device", sizes.device, "--model", sizes.dit, "--dtype", sizes.dtype, "--steps", str(sizes.steps),
            "--labels", json.dumps(sizes.labels), "--rounds", str(sizes.overhead_rounds), "--warmup", "1"]
    printed = io.StringIO()
    saved = sys.argv
    sys.argv = argv + (["--threads", "1"] if sizes.device == "cpu" else [])
    try:
        with contextlib.redirect_stdout(printed):
            _load_benchmark("harness_overhead").main()
    finally:
        sys.argv = saved
    (out / "harness_overhead.txt").write_text(printed.getvalue())
    found = re.search(r"harness - hand\s*:\s*([+-]?[\d.]+)%", printed.getvalue())
    return {"harness_vs_hand": float(found.group(1)) / 100 if found else None,
            "harness_vs_hand_note": None if found else "harness_overhead.py printed no 'harness - hand' line (see harness_overhead.txt)"}


def hook_overhead(out: Path) -> dict[str, float]:
    """Per mode, what the harness's block hooks cost: the suites' harness_overhead case (nothing reused) against their baseline."""
    found = {}
    for mode in MODES:
        row = next((r for r in run_dir_rows(out / f"peers-{mode}") if r["case"] == "harness_overhead" and r["status"] == "ok"), None)
        if row and row.get("speedup"):
            found[mode] = 1 / row["speedup"] - 1
    return found


def decision_suite(sizes: Sizes, out: Path) -> Path:
    def edit(data: dict[str, Any]) -> None:
        _dit_suite(data, sizes, 1)
        data["sampler"]["steps"] = sizes.decision_steps  # the share is per step: fewer steps, the same figure
        data["cases"] = [c for c in data["cases"] if c["name"] in ("baseline", "entropy_gate_only", "snr_gate_only", "full_dqar")]

    return derived_suite("suites/dit-xl-256.yaml", out, "decision", edit)


def count_syncs(fn: Callable[[], Any], cuda: bool) -> int | None:
    """Host syncs during `fn`, as torch's sync debug mode reports them; None on the CPU (there are none to count)."""
    import torch

    if not cuda:
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


_MODELS: dict[str, Any] = {}


def dit_model(sizes: Sizes) -> Any:
    """The DiT of this check, loaded once per process (a DiT-XL's random init takes seconds)."""
    import torch

    from dqar_bench.model.models import load_model

    if sizes.dit not in _MODELS:
        _MODELS[sizes.dit] = load_model(sizes.dit, torch.device(sizes.device), getattr(torch, sizes.dtype))
    return _MODELS[sizes.dit]


def hand_graph_loop(sizes: Sizes) -> float | None:
    """Seconds of one sampling call written by hand with the forward as one CUDA graph
    (/work/shared/gpu/anchor3.py's loop: static buffers, 50 DDIM steps, CFG), the median of
    four, timed by the harness's CallTimer; None on the CPU."""
    import torch

    from dqar_bench.measure.timing import CallTimer
    from dqar_bench.model.sampling import make_scheduler

    if sizes.device != "cuda":
        return None
    model, device, dtype = dit_model(sizes), torch.device(sizes.device), getattr(torch, sizes.dtype)
    n, channels, size = len(sizes.labels), model.latent_channels, model.sample_size
    x = torch.zeros(2 * n, channels, size, size, device=device, dtype=dtype)
    t = torch.zeros(2 * n, device=device, dtype=torch.long)
    y = torch.tensor(sizes.labels + [model.null_class] * n, device=device)
    scheduler = make_scheduler("ddim", model.scheduler_config)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model.transformer(x, timestep=t, class_labels=y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model.transformer(x, timestep=t, class_labels=y).sample

        def sample() -> Any:
            scheduler.set_timesteps(sizes.steps, device=device)
            latents = torch.randn((n, channels, size, size), generator=torch.Generator().manual_seed(0)).to(device, dtype)
            for step in scheduler.timesteps:
                x.copy_(torch.cat([latents, latents]))
                t.copy_(step.expand(2 * n))  # on the device: no host sync
                graph.replay()
                cond, uncond = out[:, :channels].chunk(2)
                latents = scheduler.step(uncond + 4.0 * (cond - uncond), step, latents).prev_sample
            return latents

        with CallTimer(device) as timer:
            sample()
            seconds = [timer.time(sample)[0].seconds for _ in range(4)]
    return statistics.median(seconds)


def syncs_per_step(sizes: Sizes, out: Path) -> dict[str, float | None]:
    """Every gate of the peers and ablations suites, eager: host syncs per sampling step."""
    import torch

    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.model.sampling import make_scheduler, sample
    from dqar_bench.runs.case_run import build_strategy
    from dqar_bench.strategy.adapter import adapter_for

    suites = [load_suite(peers_suite(sizes, out, "eager")), load_suite(decision_suite(sizes, out))]
    device = torch.device(sizes.device)
    model = dit_model(sizes)
    scheduler = make_scheduler(suites[0].sampler, model.scheduler_config)
    registry = get_registry()
    counts: dict[str, float | None] = {}
    for suite in suites:
        for case in suite.cases:
            if case.name in counts or case.hook is not None:
                continue
            strategy = build_strategy(case, registry, suite.probe_queries)

            def call(strategy: Any = strategy, suite: Any = suite) -> None:
                sample(model.transformer, scheduler, sizes.labels, 0, sizes.sync_steps, suite.guidance_scale, model.null_class, observer=strategy)

            if strategy is None:
                call()
                counted = count_syncs(call, device.type == "cuda")
            else:
                with adapter_for(model.transformer).install(model.transformer, strategy):
                    call()  # warm: the first call allocates caches
                    counted = count_syncs(call, device.type == "cuda")
            label = case.name if strategy is None else f"{case.name} ({case.parts['gate'].name})"
            counts[label] = None if counted is None else counted / sizes.sync_steps
    return counts


def step_overhead(sizes: Sizes, out: Path) -> tuple[dict[str, Any], str, str]:
    """The goal's figures first (syncs, then the runner against a hand loop); each part's
    figures are on disk (overhead.json) as soon as it ends, for a step cut short."""
    figures: dict[str, Any] = {"hooks_by_mode": hook_overhead(out)}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("syncs_per_step", lambda: syncs_per_step(sizes, out)),
        ("cudagraph", lambda: graph_vs_hand(sizes, out)),
        ("harness", lambda: harness_vs_hand(sizes, out)),
        ("decision", lambda: _load_benchmark("decision_overhead").decision_share(decision_suite(sizes, out), 2, sizes.device)),
    ]
    for name, part in parts:
        value = part()
        if name in ("harness", "cudagraph"):
            figures.update(value)
        else:
            figures[name] = value
        _replace(out / "overhead.json", json.dumps(figures, default=str).encode())
    return overhead_summary(figures)


def graph_vs_hand(sizes: Sizes, out: Path) -> dict[str, Any]:
    """The runner's cudagraph baseline (from the peers' run) against the hand-written graph loop."""
    hand = hand_graph_loop(sizes)
    base = next((r for r in run_dir_rows(out / "peers-cudagraph") if r["case"] == "baseline" and r["status"] == "ok"), None)
    found: dict[str, Any] = {"hand_graph_s_per_image": hand and hand / len(sizes.labels)}
    if hand is None:
        found["harness_vs_hand_cudagraph_note"] = "needs CUDA"
    elif base is None:
        found["harness_vs_hand_cudagraph_note"] = "no cudagraph baseline measured (step peers-cudagraph)"
    else:
        found["harness_vs_hand_cudagraph"] = base["median_ms"] / 1000 / hand - 1
    return found


def overhead_summary(figures: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    hand = figures.get("harness_vs_hand")
    counted = {k: v for k, v in (figures.get("syncs_per_step") or {}).items() if v is not None}
    text = "host syncs per step (the sampler's own included: see baseline): " + (
        ", ".join(f"{k} {v:.2f}" for k, v in counted.items()) if counted else "n/a on the CPU" if "syncs_per_step" in figures else "not reached")
    text += "; runner vs hand loop (eager): " + (f"{hand:+.2%}" if hand is not None else figures.get("harness_vs_hand_note") or "not reached")
    graph = figures.get("harness_vs_hand_cudagraph")
    text += "; runner vs hand graph loop (cudagraph): " + (
        f"{graph:+.2%} (hand loop {figures['hand_graph_s_per_image']:.4f} s/image)" if graph is not None
        else figures.get("harness_vs_hand_cudagraph_note") or "not reached")
    text += "; block hooks, nothing reused: " + (", ".join(f"{m} {v:+.2%}" for m, v in figures["hooks_by_mode"].items()) or "no peers run")
    text += "; decision share: " + (", ".join(f"{r['case']} {r['share']:.2%}" for r in figures["decision"]) if "decision" in figures else "not reached")
    verdicts = [f"overhead {mode} {'met' if abs(value) <= 0.02 else 'missed'}"
                for mode, value in (("eager", hand), ("cudagraph", graph)) if value is not None]
    if counted:
        over = [k for k, v in counted.items() if v > 1]
        verdicts.append("syncs met" if not over else f"syncs missed ({', '.join(over)})")
    return figures, text, "; ".join(verdicts) or "no figure"


# --------------------------------------------------------------------------- step 4: a FLUX-sized step

FLUX_SIZED = "flux-sized"


def register_flux_sized(sizes: Sizes) -> None:
    """A FLUX-shaped transformer as a built-in model of this process: built on the device
    (random weights from seed 0), so no multi-GB init runs on the host."""
    import torch
    from diffusers import FluxTransformer2DModel

    from dqar_bench.model import families, models
    from dqar_bench.model.loaded import LoadedModel

    def build() -> Any:
        torch.manual_seed(0)
        with torch.device(sizes.device):
            transformer = FluxTransformer2DModel(patch_size=1, **sizes.flux)
        transformer.register_to_config(sample_size=sizes.flux_latent)
        return LoadedModel(FLUX_SIZED, transformer, dict(families.get("flux").scheduler), None, "flux")

    models.BUILTIN_MODELS[FLUX_SIZED] = build
    models.BUILTIN_FAMILIES[FLUX_SIZED] = "flux"


def measure_attention_share(suite: Any, sizes: Sizes) -> dict[str, float]:
    """Attention's share of block time in two sampling steps, per block list and over all blocks.

    Each block and its attention module get a pre- and a post-hook that record a CUDA event
    (perf_counter on the CPU): time stamps only, no sync inside the forward."""
    import torch

    from dqar_bench.model import families
    from dqar_bench.model.models import load_model
    from dqar_bench.model.sampling import denoise, make_scheduler
    from dqar_bench.model.suite_condition import condition_for

    device, dtype = torch.device(suite.device), getattr(torch, suite.dtype)
    cuda = device.type == "cuda"
    model = load_model(suite.model, device, dtype)
    spec = families.get(model.family)
    spans: dict[str, list[tuple[Any, Any]]] = {}
    handles = []

    def stamp() -> Any:
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def watch(module: torch.nn.Module, key: str) -> None:
        opened: list[Any] = []
        handles.append(module.register_forward_pre_hook(lambda *a: opened.append(stamp())))
        handles.append(module.register_forward_hook(lambda *a: spans.setdefault(key, []).append((opened.pop(), stamp()))))

    condition = condition_for(suite, model, device, dtype)

    def call() -> None:
        denoise(model.transformer, make_scheduler(suite.sampler, model.scheduler_config), condition, 0, 2, suite.guidance_scale)

    call()  # warm
    for blocks in spec.blocks:
        for block in getattr(model.transformer, blocks.attr):
            watch(block, blocks.attr)
            watch(getattr(block, spec.attention[0]), f"{blocks.attr}.attention")
    try:
        call()
        if cuda:
            torch.cuda.synchronize()
    finally:
        for handle in handles:
            handle.remove()

    def seconds(key: str) -> float:
        return sum(b.elapsed_time(e) / 1000 if cuda else e - b for b, e in spans.get(key, []))

    share = {b.attr: seconds(f"{b.attr}.attention") / seconds(b.attr) for b in spec.blocks if seconds(b.attr) > 0}
    share["all blocks"] = sum(seconds(f"{b.attr}.attention") for b in spec.blocks) / sum(seconds(b.attr) for b in spec.blocks)
    model.transformer.to("meta")  # the weights go before the suite loads its own copy
    if cuda:
        torch.cuda.empty_cache()
    return share


def step_flux(sizes: Sizes, out: Path) -> tuple[dict[str, Any], str, str]:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.runner import run_suite

    register_flux_sized(sizes)

    def edit(data: dict[str, Any]) -> None:
        data.update(model=FLUX_SIZED, device=sizes.device, dtype="bfloat16" if sizes.device == "cuda" else "float32",
                    prompt_lengths=sizes.flux_prompts, seeds=[0], timing={"warmup": 1, "repeats": 2, "order": "blocked"})
        data["sampler"]["steps"] = sizes.flux_steps
        data["calibration"] = "flux-sized-calibration.json"  # TeaCache's and MagCache's fits, of this model (calibrate_fits)

    path = derived_suite("suites/peers-flow.yaml", out, "flux-sized", edit)
    calibrate_fits(path, sizes.flux_steps)
    shape = {"tokens": (sizes.flux_latent // 2) ** 2, "blocks": [sizes.flux["num_layers"], sizes.flux["num_single_layers"]]}
    share = measure_attention_share(load_suite(path), sizes)
    _replace(out / "flux-attention-share.json", json.dumps({**shape, "attention_share": share}).encode())
    run_suite(load_suite(path), fresh(out / "flux-sized"))
    return flux_figures(out)


def calibrate_fits(path: Path, steps: int) -> None:
    """The derived suite's model gets its own TeaCache and MagCache fits, as peers-flow's tiny
    models do (`dqar-bench calibrate --fits-only`: untouched calls, no search), on enough
    seeds for TeaCache's degree-4 fit (5 step pairs; a step pair per step after the first)."""
    from dqar_bench.config.suite import load_suites
    from dqar_bench.runs.calibrate import CalibrateOptions, calibrate

    seeds = list(range(1, 1 + -(-5 // max(steps - 1, 1))))  # the measured seed is 0
    calibrate(load_suites(path, calibrating=True), CalibrateOptions(path.parent / "flux-sized-calibration.json", seeds=seeds, thresholds=False))


def flux_figures(out: Path) -> tuple[dict[str, Any], str, str]:
    """From the attention share's file and the suite's records (either may be missing after a timeout)."""
    path = out / "flux-attention-share.json"
    figures: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"attention_share": {}}
    rows = run_dir_rows(out / "flux-sized")
    base = next((r for r in rows if r["case"] == "baseline" and r["status"] == "ok"), None)
    figures.update(baseline_s_per_image=base and base["per_image_ms"] / 1000, cases=rows)
    share = figures["attention_share"]
    text = (f"{figures.get('tokens')} image tokens, {'/'.join(map(str, figures.get('blocks', [])))} dual/single blocks: attention "
            + (", ".join(f"{k} {v:.1%}" for k, v in share.items()) + " of block time; " if share else "share not measured; ")
            + (f"baseline {base['per_image_ms'] / 1000:.3f} s/image; " if base else "no baseline; ")
            + "; ".join(case_text(r) for r in rows if r["case"] != "baseline"))
    total = share.get("all blocks")
    return figures, text, f"attention share {total:.1%} (ceiling of attention reuse {1 / (1 - total):.2f}x)" if total else "no figure"


# --------------------------------------------------------------------------- step 5: DQAR's ablations at DiT-XL size

def step_ablations(sizes: Sizes, out: Path) -> tuple[dict[str, Any], str, str]:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.runner import run_suite

    path = derived_suite("suites/dit-xl-256.yaml", out, "dit-xl-256", lambda data: _dit_suite(data, sizes, 2))
    run_suite(load_suite(path), fresh(out / "dit-xl-256"))
    return ablation_figures(out / "dit-xl-256")


def ablation_figures(run: Path) -> tuple[dict[str, Any], str, str]:
    rows = run_dir_rows(run)
    base = next((r for r in rows if r["case"] == "baseline" and r["status"] == "ok"), None)
    dqar = next((r for r in rows if r["case"] == "full_dqar" and r["status"] == "ok"), None)
    text = (f"baseline {base['per_image_ms'] / 1000:.4f} s/image; " if base else "no baseline; ") + "; ".join(
        case_text(r) + (f", reuse {r['reuse_ratio']:.1%}" if r.get("reuse_ratio") is not None else "") for r in rows if r["case"] != "baseline")
    verdict = f"full_dqar {'faster' if dqar['speedup'] > 1 else 'NOT faster'} ({dqar['speedup']:.2f}x)" if dqar else "full_dqar not measured"
    return {"baseline_s_per_image": base and base["per_image_ms"] / 1000, "cases": rows}, text, verdict


# --------------------------------------------------------------------------- running the steps

def run_step(name: str, sizes: Sizes, out: Path) -> tuple[dict[str, Any], str, str]:
    if name == "timer":
        return step_timer(sizes, out)
    if name.startswith("peers-"):
        return step_peers(sizes, out, name.removeprefix("peers-"))
    if name == "overhead":
        return step_overhead(sizes, out)
    if name == "flux":
        return step_flux(sizes, out)
    if name == "dit-xl-256":
        return step_ablations(sizes, out)
    raise SystemExit(f"unknown step '{name}' (steps: {', '.join(s.name for s in STEPS)})")


def partial_figures(name: str, out: Path) -> tuple[dict[str, Any], str, str] | None:
    """What a step cut short left on disk (records, overhead.json, the attention share), or None."""
    if name.startswith("peers-"):
        figures = peers_figures(out / name, name.removeprefix("peers-"))
        return figures if figures[0].get("cases") else None
    if name == "dit-xl-256":
        figures = ablation_figures(out / "dit-xl-256")
        return figures if figures[0].get("cases") else None
    if name == "flux":
        figures = flux_figures(out)
        return figures if figures[0].get("cases") or figures[0]["attention_share"] else None
    if name == "overhead" and (out / "overhead.json").exists():
        return overhead_summary(json.loads((out / "overhead.json").read_text()))
    return None


def child(name: str, sizes: Sizes, out: Path) -> int:
    """One step in this process: its figures, then its summary line."""
    step = next(s for s in STEPS if s.name == name)
    began = time.perf_counter()
    figures, text, verdict = run_step(name, sizes, out)
    Summary(out).add(name, "done", time.perf_counter() - began, figures, text, step.goal, verdict)
    return 0


def orchestrate(out: Path, dry: bool, only: list[str] | None, export: Path | None = None) -> int:
    """Every step in a child process of its own, within its budget and what is left of TOTAL_S.

    A child leads a process group of its own, in this session: a timeout kills the group
    (the step and what it started: compile workers), and so does whoever ends this session."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    summary = Summary(out)
    scale = (DRY if dry else GPU).budget_scale
    began = time.perf_counter()
    environment(out, dry, summary)
    if export is not None:
        export_results(out, export)
    for step in STEPS:
        if only and step.name not in only:
            continue
        left = TOTAL_S * scale - (time.perf_counter() - began)
        if left < 15:
            summary.add(step.name, "skipped", 0, {}, f"{left:.0f} s left of {TOTAL_S * scale:.0f} s", step.goal, "not run")
            continue
        budget = min(step.budget_s * scale, left)
        cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--step", step.name] + (["--cpu-dry-run"] if dry else [])
        start = time.perf_counter()
        with open(out / "logs" / f"{step.name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, **OWN_GROUP)
            try:
                code = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the step and whatever it started (compile workers)
                proc.wait()
                code = None
        seconds = time.perf_counter() - start
        print(f"[{time.perf_counter() - began:5.0f} s] {step.name}: {'timeout' if code is None else f'exit {code}'} after {seconds:.0f} s", flush=True)
        if step.name not in summary.steps_written():
            summarise_failure(summary, step, out, code, budget, seconds)
        if export is not None:
            export_results(out, export)
    print(f"done in {time.perf_counter() - began:.0f} s: {summary.md}", flush=True)
    return 0


OWN_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
"""A new process group in this session: `start_new_session` would outlive a killed session."""


def summarise_failure(summary: Summary, step: Step, out: Path, code: int | None, budget: float, seconds: float) -> None:
    """The line of a step that wrote none: a timeout or a crash, with what its records hold."""
    status = f"timeout after {budget:.0f} s" if code is None else f"failed (exit {code})"
    try:
        partial = partial_figures(step.name, out)
    except Exception as exc:  # noqa: BLE001 (the summary must be written whatever the records hold)
        partial = None
        status += f"; records unreadable ({type(exc).__name__})"
    if partial is not None:
        summary.add(step.name, status + ", partial", seconds, *partial[:2], step.goal, partial[2])
    else:
        summary.add(step.name, status, seconds, {}, f"see logs/{step.name}.log: {last_line(out / 'logs' / f'{step.name}.log')}", step.goal, "no figure")


KEEP_OUT = ("outputs", "report.html", "run.lock")
"""Left out of the tarball: sample latents and images (MBs per case), the HTML report that embeds them, the lock."""


def export_results(out: Path, export: Path) -> None:
    """The summary, the environment and a tarball of the rest into `export`, each file replaced whole."""
    export.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.jsonl", "environment.json"):
        if (out / name).exists():
            _replace(export / name, (out / name).read_bytes())
    partial = export / ".gpu-check.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(out, arcname="gpu-check", filter=lambda info: None if Path(info.name).name in KEEP_OUT else info)
    os.replace(partial, export / "gpu-check.tar.gz")


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1][:300] if lines else "(empty)"


def environment(out: Path, dry: bool, summary: Summary) -> None:
    """The machine, the versions and the commit, once, as the summary's first line. A device
    machine gets a copy of the work tree without .git: GPU_CHECK_COMMIT names the commit there."""
    import torch

    from dqar_bench.measure import environment as env

    began = time.perf_counter()
    sizes = DRY if dry else GPU
    info = env.collect(torch.device(sizes.device), sizes.dtype, [0], "")
    info.update(dry_run=dry, time_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    info["git_commit"] = os.environ.get("GPU_CHECK_COMMIT") or info["git_commit"] or "unknown"
    (out / "environment.json").write_text(json.dumps(info, indent=1, default=str))
    text = (f"{info['gpu'] or 'CPU dry run'}, torch {info['torch']} (CUDA {info['cuda']}), diffusers {info['diffusers']}, "
            f"commit {str(info['git_commit'])[:10]}, {info['time_utc']} UTC")
    summary.add("setup", "done", time.perf_counter() - began, info, text, "the run's machine and commit", "recorded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for everything the check writes (summary.md / .jsonl, run directories, logs)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU at toy sizes (the test of this script)")
    parser.add_argument("--only", nargs="+", metavar="STEP", help=f"run these steps only ({', '.join(s.name for s in STEPS)})")
    parser.add_argument("--export", metavar="DIR", help="after every step, copy the summary, the environment and a tarball of the records here (the device tool's $OUT)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step in this process (the orchestrator's child)
    args = parser.parse_args(argv)
    sizes = DRY if args.cpu_dry_run else GPU
    out = Path(args.out).resolve()
    if args.step:
        if sizes.device == "cpu":
            import torch

            torch.set_num_threads(1)
        return child(args.step, sizes, out)
    if not args.cpu_dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; run it on a GPU, or pass --cpu-dry-run", file=sys.stderr)
            return 2
    return orchestrate(out, args.cpu_dry_run, args.only, Path(args.export).resolve() if args.export else None)


if __name__ == "__main__":
    sys.exit(main())
