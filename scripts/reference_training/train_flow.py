"""Training (and evaluating) `digits-flow`: the reference DiT under the rectified-flow objective,
sampled with diffusers' flow-matching Euler scheduler.

Flow-matching transformers (SD3, FLUX, Wan) are what most DiT acceleration work targets, and
their step-to-step behaviour differs from epsilon-prediction DDIM; a trained flow model whose
quality a classifier can check makes that difference measurable on a CPU. Everything but the
objective and the sampler is digits-dit's (`train.py`): data split, architecture, initialisation,
training loop, EMA, label dropout, and the shipped classifier that scores it (not retrained).
Seeded, so `scripts/train_flow_reference.py` rebuilds the shipped files (bit-identical on the same
CPU, thread count and library versions).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

from dqar_bench.model.reference.classifier import FEATURE_EXTRACTOR_NAME, frechet_distance
from dqar_bench.model.reference.data import DigitsSplit, load_digits_split
from dqar_bench.model.reference.flow_sampling import sample_flow_digits
from dqar_bench.model.reference.load import CLASSIFIER_WEIGHTS_FILE, FLOW_RETRAIN_COMMAND, FLOW_WEIGHTS_DIR, METRICS_FILE, WEIGHTS_DIR
from dqar_bench.model.reference.network import DigitClassifier
from reference_training.files import MODEL_CARD_FILE, atomic_write_bytes, save_dit, save_scheduler_config, write_json
from reference_training.objectives import SIGMA_SAMPLINGS, RectifiedFlowObjective
from reference_training.train import (
    DEFAULT_SEED,
    DIT_CONFIG,
    EVAL_PER_CLASS,
    EVAL_SEED,
    RESOLUTION,
    Draw,
    balanced_real_subset,
    eval_labels,
    evaluate,
    train_dit,
)

FLOW_DIT_CONFIG: dict[str, Any] = dict(DIT_CONFIG)
"""digits-dit's architecture unchanged (6 blocks, hidden 128, patch 2): only the objective differs."""

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SIGMA_SAMPLING = "logit-normal"
"""How training draws the noise level s; see the model card for why logit-normal over uniform."""
DEFAULT_SHIFT = 2.0
"""FlowMatchEulerDiscreteScheduler's shift; see the model card for why."""
DEFAULT_STEPS = 3000
DEFAULT_GUIDANCE = 1.5
DEFAULT_INFERENCE_STEPS = 25
GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0)
SWEEP_INFERENCE_STEPS = (10, 50)
SWEEP_SHIFTS = (1.0, 2.0, 3.0)
SWEEP_SHIFT_STEPS = (10, 25)
"""Sampling-time shifts compared at the baseline guidance (the trained model does not depend on the shift)."""
TEST_SAMPLE_PER_CLASS = 2
TEST_SAMPLE_STEPS = 10
"""tests/test_reference_flow.py regenerates the first 20 digits of the evaluation batch at 10 steps."""

TRAINING_KEYS = (
    "command", "seed", "threads", "machine", "torch_version", "diffusers_version", "resolution",
    "train_size", "held_out_size", "dit_config", "dit_parameters", "objective", "dit_steps", "batch_size",
    "lr", "warmup_steps", "ema_decay", "cfg_drop_prob", "train_loss_final", "held_out_loss",
    "dit_train_seconds", "dit_train_cpu_seconds",
)
"""metrics.json entries that describe training; `--evaluate-only` carries them over unchanged."""


def scheduler_config(shift: float) -> dict[str, Any]:
    """The full FlowMatchEulerDiscreteScheduler config (diffusers' defaults written out)."""
    config = dict(FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift).config)
    config.pop("_use_default_values", None)
    return config


def flow_draw(config: dict[str, Any]) -> Draw:
    def draw(model: DiTTransformer2DModel, labels: torch.Tensor, seed: int, n: int, g: float) -> torch.Tensor:
        return sample_flow_digits(model, config, labels, seed, n, g)

    return draw


def evaluate_flow(
    dit: DiTTransformer2DModel,
    config: dict[str, Any],
    classifier: DigitClassifier,
    classifier_path: Path,
    split: DigitsSplit,
    guidance: float,
    log: Any = print,
) -> dict[str, Any]:
    """Every figure of the model card: accuracy and Frechet distance per guidance scale, per
    step count and per shift, the small test sample, and the real-data Frechet floor."""
    draw = flow_draw(config)
    scales = sorted({guidance, *GUIDANCE_SCALES})
    by_guidance = evaluate(dit, classifier, classifier_path, split, scales, num_inference_steps=DEFAULT_INFERENCE_STEPS, draw=draw)
    for g, v in by_guidance.items():
        log(f"guidance {g}, {DEFAULT_INFERENCE_STEPS} steps: class accuracy {v['class_accuracy']:.3f} frechet {v['frechet_distance']:.3f}")
    by_steps = {}
    for n in SWEEP_INFERENCE_STEPS:
        v = evaluate(dit, classifier, classifier_path, split, [guidance], num_inference_steps=n, draw=draw)[f"{guidance:g}"]
        by_steps[str(n)] = v
        log(f"guidance {guidance:g}, {n} steps: class accuracy {v['class_accuracy']:.3f} frechet {v['frechet_distance']:.3f}")
    by_shift: dict[str, dict[str, dict[str, float]]] = {}
    for shift in SWEEP_SHIFTS:
        other = flow_draw({**config, "shift": shift})
        by_shift[f"{shift:g}"] = {}
        for n in SWEEP_SHIFT_STEPS:
            v = evaluate(dit, classifier, classifier_path, split, [guidance], num_inference_steps=n, draw=other)[f"{guidance:g}"]
            by_shift[f"{shift:g}"][str(n)] = v
            log(f"shift {shift:g}, guidance {guidance:g}, {n} steps: class accuracy {v['class_accuracy']:.3f} "
                f"frechet {v['frechet_distance']:.3f}")

    test_labels = eval_labels(TEST_SAMPLE_PER_CLASS)
    test_images = draw(dit, test_labels, EVAL_SEED, TEST_SAMPLE_STEPS, guidance)
    with torch.no_grad():
        test_acc = float((classifier(test_images).argmax(1) == test_labels).double().mean().item())
    real = balanced_real_subset(split, EVAL_PER_CLASS, DEFAULT_SEED + 3)
    return {
        "feature_extractor": FEATURE_EXTRACTOR_NAME,
        "scheduler_config": config,
        "guidance_scale": guidance,
        "inference_steps": DEFAULT_INFERENCE_STEPS,
        "eval_seed": EVAL_SEED,
        "eval_per_class": EVAL_PER_CLASS,
        "evaluation": by_guidance,
        "evaluation_other_steps": by_steps,
        "evaluation_by_shift": by_shift,
        "frechet_real_train_vs_held_out": frechet_distance(real, split.test_images, weights_path=classifier_path),
        "test_sample": {
            "size": int(test_labels.shape[0]),
            "seed": EVAL_SEED,
            "inference_steps": TEST_SAMPLE_STEPS,
            "guidance_scale": guidance,
            "class_accuracy": test_acc,
        },
    }


def write_model_card(out_dir: Path, m: dict[str, Any]) -> None:
    g = f"{m['guidance_scale']:g}"
    n = m["inference_steps"]
    sched = m["scheduler_config"]
    shift = f"{sched['shift']:g}"
    base = m["evaluation"][g]
    guidance_rows = "\n".join(
        f"| {scale} | {v['class_accuracy']:.3f} | {v['frechet_distance']:.3f} |"
        for scale, v in sorted(m["evaluation"].items(), key=lambda kv: float(kv[0]))
    )
    steps_rows = "\n".join(
        f"| {k} | {v['class_accuracy']:.3f} | {v['frechet_distance']:.3f} |"
        for k, v in sorted({**m["evaluation_other_steps"], str(n): base}.items(), key=lambda kv: int(kv[0]))
    )
    shift_rows = "\n".join(
        f"| {k} | " + " | ".join(f"{v[n]['class_accuracy']:.3f} / {v[n]['frechet_distance']:.3f}" for n in sorted(v, key=int)) + " |"
        for k, v in sorted(m["evaluation_by_shift"].items(), key=lambda kv: float(kv[0]))
    )
    shift_steps = sorted(next(iter(m["evaluation_by_shift"].values())), key=int)
    dit, obj, ts = m["dit_config"], m["objective"], m["test_sample"]
    card = f"""# dqar-bench reference model `digits-flow`: class-conditional DiT on sklearn digits, rectified flow

Generated by the command under "Retraining"; every figure below comes from that run
(`metrics.json` holds them machine-readably; `tests/test_reference_flow.py` checks the shipped
files against it). The sibling of `digits-dit` (one folder up): same data, architecture,
initialisation and training loop; trained with the rectified-flow objective and sampled with
diffusers' `FlowMatchEulerDiscreteScheduler` instead of epsilon prediction and DDIM.

## Data
- sklearn `load_digits`, 8x8 grey digits scaled to [-1, 1], the stratified split of
  `dqar_bench.model.reference.data.load_digits_split`: {m['train_size']} training / {m['held_out_size']} held-out digits.
  Trained on the training split only.

## Model (`config.json`, `diffusion_pytorch_model.safetensors`)
- diffusers `DiTTransformer2DModel`, pixel space (no VAE): in/out channels 1 (the velocity, no learned
  sigma), sample size {dit['sample_size']}, patch {dit['patch_size']} ({(dit['sample_size'] // dit['patch_size']) ** 2} tokens),
  {dit['num_layers']} blocks, {dit['num_attention_heads']} heads x {dit['attention_head_dim']} = hidden {dit['num_attention_heads'] * dit['attention_head_dim']},
  adaLN-zero, `num_embeds_ada_norm=10` (class 10 = null class for classifier-free guidance);
  {m['dit_parameters']:,} parameters, float32.

## Objective
- Rectified flow: x_s = (1 - s) x0 + s noise, noise ~ N(0, I); the model predicts the velocity
  v = noise - x0 (MSE), and is given the timestep s * {obj['num_train_timesteps']} as a float, which is what
  `FlowMatchEulerDiscreteScheduler.timesteps` (sigma * num_train_timesteps) hands it when sampling.
- s = sigmoid(n), n ~ N(0, 1) (SD3's logit-normal; `--sigma-sampling {obj['sigma_sampling']}`). Why not uniform: the
  ends of the path are easy (near s = 1 the velocity is about noise minus the mean digit, near
  s = 0 the digit can almost be read off the input), while a digit's class and strokes are
  decided at mid-range noise, so that is where a short training budget pays. In 600-step pilot
  runs (same seed and settings otherwise; figures from those pilots, not from this run) at
  25 steps and shift 1, logit-normal gave class accuracy 0.970 / 1.000 and Frechet distance
  30.1 / 63.1 at g = 1 / 1.5, against 0.950 / 0.990 and 45.4 / 64.6 for uniform.

## Schedule (`scheduler_config.json`)
- diffusers `FlowMatchEulerDiscreteScheduler`, `num_train_timesteps={sched['num_train_timesteps']}`, `shift={shift}`,
  no dynamic shifting, Euler (deterministic). The file holds the full config; build the sampler
  from it (`dqar_bench.model.reference.load.load_flow_reference_scheduler_config`).
- Why shift {shift}: shift > 1 spends more of the steps at high noise (SD3 uses 3 for 1024 px latents).
  On this model at g = {g}, shift 2 gave the lowest or near-lowest Frechet distance at both 10 and
  25 steps (table below), where shift 1 is worse at 10 steps and shift 3 no better; and with a
  shift other than 1, a sampler that ignored the shift could not reproduce these figures.

## Training
- Seed {m['seed']}, {m['dit_steps']} steps, batch {m['batch_size']}, AdamW lr {m['lr']:g} ({m['warmup_steps']} warm-up steps, cosine to 10 %),
  grad-norm clip 1, EMA {m['ema_decay']:g} (the shipped weights are the EMA). DiT initialisation (xavier,
  zeroed adaLN modulation / output). Label dropout: diffusers' built-in per-block 0.1, plus a whole
  sample set to the null class with probability {m['cfg_drop_prob']:g} (so the unconditional branch is trained).
- Final training loss (velocity MSE, mean of the last 500 steps): {m['train_loss_final']:.4f};
  held-out velocity MSE of the EMA weights (fixed noise and s): {m['held_out_loss']:.4f}.
- Training time: **{m['dit_train_cpu_seconds'] / 60:.1f} CPU-minutes** ({m['dit_train_seconds'] / 60:.1f} min wall) for the training loop
  (`time.process_time` / `time.perf_counter` around it), {m['threads']} torch thread, under `nice` on a 2-core machine
  heavily shared with other work ({m['machine']}), hence the wall time; about {m['dit_train_cpu_seconds'] / 60:.0f} minutes on an
  otherwise idle core. The evaluation below took {m['evaluation_cpu_seconds'] / 60:.1f} CPU-minutes ({m['evaluation_seconds'] / 60:.1f} min wall).

## Sampling convention (what the figures below are, and what the harness reproduces)
`dqar_bench.model.reference.flow_sampling.sample_flow_digits`: x ~ N(0, I) drawn on the CPU by
the harness's image noise draw, seed {m['eval_seed']} (`torch.Generator().manual_seed(seed)`,
`torch.randn((batch, 1, 8, 8))`), labels `arange(10).repeat({m['eval_per_class']})`; `scheduler.set_timesteps(steps)`;
for each t in `scheduler.timesteps` (float, sigma * 1000): the model is called on `cat([x, x])`
with `timestep=t.expand(2 * batch)` and labels `cat([labels, 10])`, v = v_uncond + g (v_cond - v_uncond),
`x = scheduler.step(v, t, x).prev_sample`; at g = 1 only the conditional batch runs. Images
clamped to [-1, 1], scored with the shipped digit classifier (`{m['feature_extractor']}`).

## Baseline quality
- **Baseline, guidance g = {g}, {n} Euler steps, shift {shift}: class accuracy {base['class_accuracy']:.3f},
  classifier-feature Frechet distance vs the {m['held_out_size']} held-out digits {base['frechet_distance']:.3f}.**
- Floor for scale: 200 real training digits (20 per class) vs the held-out digits give
  {m['frechet_real_train_vs_held_out']:.3f}.
- Why g = {g} (as digits-dit, so the two reference models run alike): with guidance > 1 the
  conditional and null-class branches run as one batch, as in the models being accelerated;
  class accuracy is saturated at every g; the Frechet distance grows with g (over-sharpened,
  less diverse digits), and at g = {g} it still clearly registers cruder sampling (fewer steps).

| guidance ({n} steps, shift {shift}) | class accuracy | Frechet distance |
|---|---|---|
{guidance_rows}

| Euler steps (g = {g}, shift {shift}) | class accuracy | Frechet distance |
|---|---|---|
{steps_rows}

| shift (g = {g}) | {" | ".join(f"{k} steps: accuracy / Frechet" for k in shift_steps)} |
|---|{"---|" * len(shift_steps)}
{shift_rows}

Small fixed sample used by `tests/test_reference_flow.py`: the first {ts['size']} of the batch above (same seed,
labels `arange(10).repeat(2)`, {ts['inference_steps']} Euler steps, g = {g}): class accuracy {ts['class_accuracy']:.2f}.

## Retraining
```
{m['command']}
```
About {(m['dit_train_cpu_seconds'] + m['evaluation_cpu_seconds']) / 60:.0f} CPU-minutes in all; it rewrites every file in this folder (the classifier one folder
up is digits-dit's and is only read). Add `--evaluate-only` to recompute only the figures (metrics.json,
this card) for the weights and scheduler config already here.
Deterministic for a given seed on the same CPU type, thread count and library versions
(torch {m['torch_version']}, diffusers {m['diffusers_version']}); elsewhere the figures may move slightly.
"""
    atomic_write_bytes(out_dir / MODEL_CARD_FILE, card.encode())


def main(argv: Sequence[str] | None = None) -> int:
    """Train digits-flow, evaluate it, write weights + configs + metrics + model card."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="train_flow_reference.py",
        description="Train digits-flow: the dqar-bench reference DiT under the rectified-flow objective.",
    )
    parser.add_argument("--out", type=Path, default=FLOW_WEIGHTS_DIR, help="output folder (default: the shipped digits-flow folder)")
    parser.add_argument("--classifier", type=Path, default=WEIGHTS_DIR / CLASSIFIER_WEIGHTS_FILE,
                        help="the digit classifier that scores the samples (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DiT optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sigma-sampling", choices=SIGMA_SAMPLINGS, default=DEFAULT_SIGMA_SAMPLING,
                        help="how training draws the noise level s")
    parser.add_argument("--shift", type=float, default=None,
                        help=f"FlowMatchEulerDiscreteScheduler shift for sampling (default {DEFAULT_SHIFT:g}; with "
                             "--evaluate-only, default: keep the folder's scheduler_config.json)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps the float reduction order (so the weights) machine-independent")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="baseline guidance scale")
    parser.add_argument(
        "--evaluate-only", action="store_true",
        help="skip training: re-evaluate the weights and scheduler config in --out, rewrite metrics.json and MODEL_CARD.md",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    from dqar_bench.model.reference.load import (
        load_classifier,
        load_flow_reference_dit,
        load_flow_reference_metrics,
        load_flow_reference_scheduler_config,
    )

    split = load_digits_split(resolution=RESOLUTION)
    classifier = load_classifier(path=args.classifier)
    if args.evaluate_only:
        previous = load_flow_reference_metrics(out_dir)
        training = {k: previous[k] for k in TRAINING_KEYS}
        dit = load_flow_reference_dit(out_dir)
        log(f"re-evaluating the weights in {out_dir} (trained by: {training['command']})")
        if args.shift is not None:  # a sampling setting: changing it needs no retraining
            save_scheduler_config(FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(args.shift)), out_dir)
    else:
        objective = RectifiedFlowObjective(sigma_sampling=args.sigma_sampling, num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        hyper = {"warmup": 200, "ema_decay": 0.999, "cfg_drop_prob": 0.1}
        dit, stats = train_dit(
            split, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            objective=objective, config=FLOW_DIT_CONFIG, log=log, **hyper,
        )
        save_dit(dit, out_dir)
        shift = DEFAULT_SHIFT if args.shift is None else args.shift
        save_scheduler_config(FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(shift)), out_dir)
        log(f"dit trained in {stats['train_wall_seconds']:.0f}s wall / {stats['train_cpu_seconds']:.0f}s CPU, "
            f"held-out loss {stats['held_out_loss']:.4f}")

        import diffusers

        training = {
            "command": " ".join([FLOW_RETRAIN_COMMAND, *argv]),
            "seed": args.seed,
            "threads": args.threads,
            "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
            "resolution": RESOLUTION,
            "train_size": int(split.train_images.shape[0]),
            "held_out_size": int(split.test_images.shape[0]),
            "dit_config": FLOW_DIT_CONFIG,
            "dit_parameters": sum(p.numel() for p in dit.parameters()),
            "objective": {
                "name": objective.name,
                "sigma_sampling": objective.sigma_sampling,
                "num_train_timesteps": objective.num_train_timesteps,
                "prediction": "velocity noise - x0",
            },
            "dit_steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": hyper["warmup"],
            "ema_decay": hyper["ema_decay"],
            "cfg_drop_prob": hyper["cfg_drop_prob"],
            "train_loss_final": stats["train_loss_final"],
            "held_out_loss": stats["held_out_loss"],
            "dit_train_seconds": stats["train_wall_seconds"],
            "dit_train_cpu_seconds": stats["train_cpu_seconds"],
        }

    # Evaluated with the config as written to disk, so the figures are the shipped file's.
    config = load_flow_reference_scheduler_config(out_dir)
    eval_start, eval_cpu_start = time.perf_counter(), time.process_time()
    figures = evaluate_flow(dit, config, classifier, args.classifier, split, args.guidance, log)
    metrics: dict[str, Any] = {
        **training,
        **figures,
        "evaluation_seconds": time.perf_counter() - eval_start,
        "evaluation_cpu_seconds": time.process_time() - eval_cpu_start,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    write_model_card(out_dir, metrics)
    base = figures["evaluation"][f"{args.guidance:g}"]
    log(f"done: baseline (g={args.guidance:g}, {DEFAULT_INFERENCE_STEPS} steps) class accuracy {base['class_accuracy']:.3f}, "
        f"frechet {base['frechet_distance']:.3f}, test sample accuracy {figures['test_sample']['class_accuracy']:.2f}; files in {out_dir}")
    return 0
