"""How much does the harness itself cost? Its baseline against a hand-written sampling loop.

Both run in this process on the same model, batch, sampler and seeds, interleaved call by
call (harness, hand, harness, hand, ...) so drift and a busy neighbour hit both alike. The
harness side is the runner's own path for the untouched model (`runner.run_case`: step
hook, NVML sampler, memory resets and all); the hand side is the plain loop a user would
write, timed as /work/shared/gpu/anchor.py times (CUDA events and one sync on a GPU,
perf_counter on the CPU). On the CPU it reports both clocks: wall time and the process's
CPU time (`timing: {clock: cpu}`, `time.process_time`), which a busy neighbour does not
stretch. The goal is under 2 % apart. It also checks the timer against a synthetic model
whose blocks cost a known, real time.

    python benchmarks/harness_overhead.py [--model dit-tiny] [--device auto] [--steps 20] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tests/ (the synthetic model of known cost)

from dqar_bench.config.suite import load_suite
from dqar_bench.core.plugins import load_registry
from dqar_bench.measure.instruments import Instruments
from dqar_bench.measure.stats import Measurement, mann_whitney_u
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import make_scheduler
from dqar_bench.runs.runner import run_case
from dqar_bench.runs.suite_model import resolve_device
from tests import synthetic  # noqa: E402


def hand_loop(model, scheduler, labels, seed, steps, guidance, device, dtype):
    transformer = model.transformer
    channels, size, batch = model.latent_channels, model.sample_size, len(labels)
    scheduler.set_timesteps(steps, device=device)
    noise = torch.randn((batch, channels, size, size), generator=torch.Generator().manual_seed(seed))  # as the harness draws it
    latents = noise.to(device=device, dtype=dtype)
    y = torch.tensor(labels + [model.null_class] * batch, device=device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(torch.cat([latents, latents]), timestep=t.expand(2 * batch), class_labels=y).sample
            cond, uncond = out[:, :channels].chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


def time_hand(fn, device, clock="wall"):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    now = time.process_time if clock == "cpu" else time.perf_counter
    begin = now()
    fn()
    return now() - begin


def overhead(args, clock="wall"):
    yaml = textwrap.dedent(f"""
        name: harness-overhead
        model: {args.model}
        sampler: {{name: ddim, steps: {args.steps}, guidance_scale: 4.0}}
        class_labels: {args.labels}
        seeds: [0]
        device: {args.device}
        dtype: {args.dtype}
        timing: {{warmup: 0, repeats: 1, clock: {clock}}}
        cases:
          - name: baseline
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_text(yaml)
        registry = load_registry(autoload=False)
        suite = load_suite(path, registry)
    device = resolve_device(suite.device)
    dtype = getattr(torch, suite.dtype)
    model = load_model(suite.model, device, dtype)
    case = suite.case("baseline")
    scheduler = make_scheduler("ddim", model.scheduler_config)
    kit = Instruments(device=device)

    def harness_once():
        record, _ = run_case(suite, case, model, device, registry, None, kit)
        if not record.ok:
            raise SystemExit(f"harness case failed: {record.error}")
        return record.latency_s[0]

    def hand_once():
        return time_hand(lambda: hand_loop(model, scheduler, suite.class_labels, 0, suite.steps, 4.0, device, dtype), device, clock)

    for _ in range(args.warmup):
        harness_once()
        hand_once()
    harness, hand = [], []
    for _ in range(args.rounds):
        harness.append(harness_once())
        hand.append(hand_once())
    h, m = Measurement.of(harness).scaled(1000), Measurement.of(hand).scaled(1000)
    p = mann_whitney_u(harness, hand).p_value
    diff = h.median / m.median - 1
    print(f"model {suite.model}, {device}, {suite.dtype}, batch {len(suite.class_labels)}, {suite.steps} DDIM steps, CFG; {args.rounds} interleaved rounds; clock: {clock}")
    print(f"  harness baseline : median {h.median:9.3f} ms  (IQR {h.iqr:.3f}, p10 {h.p10:.3f}, p90 {h.p90:.3f}, {h.noise})")
    print(f"  hand-written loop: median {m.median:9.3f} ms  (IQR {m.iqr:.3f}, p10 {m.p10:.3f}, p90 {m.p90:.3f}, {m.noise})")
    print(f"  harness - hand   : {diff:+.2%} of the hand loop (Mann-Whitney U p = {p:.3g}); goal: within 2 %")


def timer_check(args):
    """The real clock against a model whose blocks really cost a known time."""
    steps, blocks, attn, mlp = 4, 2, 0.025, 0.005
    model = synthetic.build(blocks=blocks, attention_s=attn, mlp_s=mlp)
    from dqar_bench.measure.timing import CallTimer

    scheduler = make_scheduler("ddim", model.scheduler_config)
    from dqar_bench.model.sampling import sample

    samples = []
    with CallTimer(torch.device("cpu"), model.transformer) as timer:
        for seed in range(args.rounds):
            timing, _ = timer.time(lambda: sample(model.transformer, scheduler, [1, 2], seed, steps, 4.0, model.null_class))
            samples.append(timing.seconds)
    expected = synthetic.expected_call_s(steps, blocks, attn, mlp)
    got = statistics.median(samples)
    print(f"timer check (synthetic blocks, real sleep+spin): expected {expected * 1000:.2f} ms, measured median {got * 1000:.2f} ms ({got / expected - 1:+.2%}; the excess is the sampler's own work)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dit-tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--labels", default="[1, 3, 5, 7]")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own); 1 is steadier on a shared machine")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = resolve_device(args.device).type == "cuda"
    for clock in ("wall",) if on_gpu else ("wall", "cpu"):  # CPU time means nothing for a GPU's work
        overhead(args, clock)
    timer_check(args)


if __name__ == "__main__":
    main()
