"""Training (and evaluating) the reference DiT and the digit classifier from fixed seeds.

The benchmark needs a real, trained DiT whose quality can be checked on a CPU in seconds:
a pixel-space, class-conditional DiT on sklearn's 8x8 digits trains in minutes on two cores,
and a digit classifier trained on the same split turns "is the sample still right after
acceleration" into a number. Everything here is seeded so `scripts/train_reference.py`
rebuilds the shipped files (bit-identical on the same CPU, thread count and library versions).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiTTransformer2DModel
from torch import nn

from dqar_bench.model.reference.classifier import FEATURE_EXTRACTOR_NAME, frechet_distance
from dqar_bench.model.reference.data import NUM_CLASSES, DigitsSplit, load_digits_split
from dqar_bench.model.reference.load import CLASSIFIER_WEIGHTS_FILE, METRICS_FILE, NULL_CLASS, RETRAIN_COMMAND, WEIGHTS_DIR
from dqar_bench.model.reference.network import DigitClassifier
from dqar_bench.model.sampling import sample
from reference_training.files import (
    MODEL_CARD_FILE,
    atomic_write_bytes,
    save_dit,
    save_scheduler_config,
    save_tensors,
    write_json,
)
from reference_training.objectives import EpsilonObjective, Objective

RESOLUTION = 8

DIT_CONFIG: dict[str, Any] = {
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "dropout": 0.0,
    "norm_num_groups": 32,
    "attention_bias": True,
    "sample_size": RESOLUTION,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": NUM_CLASSES,
    "upcast_attention": False,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
}

# DiT's training schedule (1000 steps, linear betas 1e-4..0.02, epsilon prediction). x0 clipping
# stays off as in DiT: diffusers' DDIM clips x0 but keeps the unclipped epsilon for the direction
# term, which under guidance 4 wrecks the samples (class accuracy 0.15 instead of 0.99 in a trial).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "leading",
}

DEFAULT_SEED = 0
DEFAULT_DIT_STEPS = 3000
DEFAULT_GUIDANCE = 1.5
"""Baseline guidance. Chosen over DiT's customary 4 on the trained model's figures: at g=4 the
classifier-feature Frechet distance is ~15x the real-data floor and *drops* with fewer DDIM steps
(322 at 50 steps, 279 at 10), so it could not rank accelerated runs; at 1.5 it is 3x the floor and
rises as sampling is cut short, while class accuracy stays at 1.0 and the null-class branch still
matters (at g=1 it would cancel out)."""
DEFAULT_INFERENCE_STEPS = 50
EVAL_PER_CLASS = 20
EVAL_SEED = 0
SWEEP_INFERENCE_STEPS = (10, 25)
"""Fewer-step runs of the baseline, to show that the figures do register cruder sampling."""
TEST_SAMPLE_PER_CLASS = 2
"""The small sample tests/test_reference.py regenerates: the first 20 of the evaluation batch."""


# --------------------------------------------------------------------------- sampling


Draw = Callable[[DiTTransformer2DModel, torch.Tensor, int, int, float], torch.Tensor]
"""`draw(model, labels, seed, num_inference_steps, guidance_scale) -> images in [-1, 1]`."""


def eval_labels(per_class: int) -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: every prefix of ten is balanced, so a smaller sample from the
    same seed is the head of the big one (the generator fills the noise in order)."""
    return torch.arange(NUM_CLASSES).repeat(per_class)


@torch.no_grad()
def sample_digits(
    model: DiTTransformer2DModel,
    scheduler_config: dict[str, Any],
    labels: torch.Tensor,
    seed: int,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> torch.Tensor:
    """The harness's own sampling call (`dqar_bench.model.sampling.sample`, DDIM, classifier-free
    guidance with the null class), so the model card's figures are the benchmark's baseline;
    images clamped to [-1, 1]."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    x = sample(model, scheduler, labels.tolist(), seed, num_inference_steps, guidance_scale, NULL_CLASS)
    return x.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- classifier


def train_classifier(
    split: DigitsSplit,
    seed: int = DEFAULT_SEED,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 2e-3,
    log: Any = print,
) -> tuple[DigitClassifier, float]:
    """Trained on the training split only, so its held-out accuracy is honest. Light noise
    augmentation because it will judge generated digits, which are never quite clean."""
    torch.manual_seed(seed)
    model = DigitClassifier(resolution=split.resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = split.train_images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = split.train_images[idx]
            x = (x + 0.1 * torch.rand(x.shape[0], 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen))
            loss = F.cross_entropy(model(x.clamp(-1, 1)), split.train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 20 == 0:
            log(f"classifier epoch {epoch + 1}/{epochs} loss {loss.item():.4f} "
                f"held-out accuracy {classifier_accuracy(model, split):.4f}")
    model.eval()
    return model, classifier_accuracy(model, split)


@torch.no_grad()
def classifier_accuracy(model: DigitClassifier, split: DigitsSplit) -> float:
    was_training = model.training
    model.eval()
    pred = model(split.test_images).argmax(dim=1)
    model.train(was_training)
    return float((pred == split.test_labels).double().mean().item())


# --------------------------------------------------------------------------- DiT


def build_dit(seed: int = DEFAULT_SEED, config: dict[str, Any] | None = None) -> DiTTransformer2DModel:
    """DiT's own initialisation (diffusers keeps PyTorch defaults): xavier linears, and zeroed
    adaLN modulation and output layer so every block starts as the identity, which makes a
    small DiT converge markedly faster."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**(DIT_CONFIG if config is None else config))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    pe = model.pos_embed.proj
    nn.init.xavier_uniform_(pe.weight.view(pe.weight.shape[0], -1))
    nn.init.zeros_(pe.bias)
    for block in model.transformer_blocks:
        emb = block.norm1.emb
        nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def epsilon_objective() -> EpsilonObjective:
    """digits-dit's objective, on the DDIM schedule it is sampled with."""
    return EpsilonObjective(DDIMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.to(torch.float32))


def train_dit(
    split: DigitsSplit,
    seed: int = DEFAULT_SEED,
    steps: int = DEFAULT_DIT_STEPS,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    cfg_drop_prob: float = 0.1,
    log: Any = print,
    log_every: int = 500,
    objective: Objective | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[DiTTransformer2DModel, dict[str, float]]:
    """Training on the training split under `objective` (default: digits-dit's epsilon
    prediction); returns the EMA weights.

    diffusers' DiT drops the label independently in every block's embedding (class_dropout_prob
    0.1, active in train mode), so a whole forward pass with no label is almost never seen.
    Classifier-free guidance feeds the null class to every block at once, so whole samples are
    additionally given the null label with probability `cfg_drop_prob`, as in the DiT paper.
    """
    objective = epsilon_objective() if objective is None else objective
    model = build_dit(seed, config)
    ema = deepcopy(model).eval().requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:
        # Linear warm-up, then cosine decay to 10 %: a short run still ends on small steps.
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(seed + 1)
    n = split.train_images.shape[0]
    perm, cursor = torch.randperm(n, generator=gen), 0
    window: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        if cursor + batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + batch_size]
        cursor += batch_size
        x0 = split.train_images[idx]
        labels = split.train_labels[idx].clone()
        labels[torch.rand(labels.shape[0], generator=gen) < cfg_drop_prob] = NULL_CLASS
        xt, t, target = objective.corrupt(x0, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = F.mse_loss(model(xt, timestep=t, class_labels=labels).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1.0 - decay)
        window.append(loss.item())
        window = window[-log_every:]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            log(f"dit step {step + 1}/{steps} loss(mean of last {len(window)}) "
                f"{sum(window) / len(window):.4f} lr {lr_at(step):.2e} {elapsed:.0f}s")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ema.eval()
    stats = {
        "train_loss_final": sum(window) / len(window),
        "held_out_loss": held_out_loss(ema, split, objective, seed),
        "train_wall_seconds": wall,
        "train_cpu_seconds": cpu,
    }
    return ema, stats


@torch.no_grad()
def held_out_loss(model: DiTTransformer2DModel, split: DigitsSplit, objective: Objective, seed: int) -> float:
    """The objective's MSE on held-out digits with fixed noise and timesteps (4 draws per image,
    true labels), a loss figure that does not wander with the training batch."""
    gen = torch.Generator().manual_seed(seed + 2)
    x0 = split.test_images.repeat(4, 1, 1, 1)
    labels = split.test_labels.repeat(4)
    xt, t, target = objective.corrupt(x0, gen)
    return float(F.mse_loss(model(xt, timestep=t, class_labels=labels).sample, target).item())


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    dit: DiTTransformer2DModel,
    classifier: DigitClassifier,
    classifier_path: Path,
    split: DigitsSplit,
    guidance_scales: Sequence[float],
    per_class: int = EVAL_PER_CLASS,
    seed: int = EVAL_SEED,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    draw: Draw | None = None,
) -> dict[str, dict[str, float]]:
    """Class accuracy and classifier-feature Frechet distance (vs all held-out digits) per
    guidance scale, on one seeded batch of `per_class` x 10 samples made by `draw`
    (default: digits-dit's DDIM sampling)."""
    draw = draw or (lambda model, labels, seed, n, g: sample_digits(model, SCHEDULER_CONFIG, labels, seed, n, g))
    labels = eval_labels(per_class)
    out: dict[str, dict[str, float]] = {}
    for g in guidance_scales:
        images = draw(dit, labels, seed, num_inference_steps, g)
        acc = float((classifier(images).argmax(1) == labels).double().mean().item())
        fd = frechet_distance(images, split.test_images, weights_path=classifier_path)
        out[f"{g:g}"] = {"class_accuracy": acc, "frechet_distance": fd}
    return out


# --------------------------------------------------------------------------- files


def save_classifier(model: DigitClassifier, out_dir: Path) -> Path:
    path = out_dir / CLASSIFIER_WEIGHTS_FILE
    save_tensors(path, model, {"format": "pt", **{k: str(v) for k, v in model.architecture().items()}})
    return path


def _command(argv: Sequence[str]) -> str:
    return " ".join([RETRAIN_COMMAND, *argv])


def write_model_card(out_dir: Path, metrics: dict[str, Any]) -> None:
    m = metrics
    g = f"{m['guidance_scale']:g}"
    base = m["evaluation"][g]
    others = "\n".join(
        f"| {scale} | {v['class_accuracy']:.3f} | {v['frechet_distance']:.3f} |"
        for scale, v in sorted(m["evaluation"].items(), key=lambda kv: float(kv[0]))
    )
    sweep = "\n".join(
        f"| {n} | {v['class_accuracy']:.3f} | {v['frechet_distance']:.3f} |"
        for n, v in sorted({**m["evaluation_fewer_steps"], str(m["inference_steps"]): base}.items(), key=lambda kv: int(kv[0]))
    )
    dit = m["dit_config"]
    card = f"""# dqar-bench reference model: pixel-space class-conditional DiT on sklearn digits

Generated by the command under "Retraining"; every figure below comes from that run
(`metrics.json` holds them machine-readably; `tests/test_reference.py` checks the shipped
files against it).

## Data
- sklearn `load_digits`: 1797 grey 8x8 digits, intensities 0..16 scaled to [-1, 1]
  (`x / 16 * 2 - 1`), used at {m['resolution']}x{m['resolution']} (native, no upsampling).
- Split: stratified `train_test_split(test_size=0.2, random_state=0)` ->
  {m['train_size']} training / {m['held_out_size']} held-out digits
  (`dqar_bench.model.reference.data.load_digits_split`). Both models train on the training split only.

## DiT (`config.json`, `diffusion_pytorch_model.safetensors`)
- diffusers `DiTTransformer2DModel`, pixel space (no VAE): in/out channels 1 (epsilon, no learned
  sigma), sample size {dit['sample_size']}, patch {dit['patch_size']} ({(dit['sample_size'] // dit['patch_size']) ** 2} tokens),
  {dit['num_layers']} blocks, {dit['num_attention_heads']} heads x {dit['attention_head_dim']} = hidden {dit['num_attention_heads'] * dit['attention_head_dim']},
  adaLN-zero, `num_embeds_ada_norm=10` (class 10 = null class for classifier-free guidance);
  {m['dit_parameters']:,} parameters.
- Schedule (`scheduler_config.json`): `DDIMScheduler`, 1000 train timesteps, linear betas
  0.0001..0.02, epsilon prediction, no x0 clipping (as DiT), `timestep_spacing="leading"`.
- Training: seed {m['seed']}, {m['dit_steps']} steps, batch {m['batch_size']}, AdamW lr {m['lr']:g} (200 warm-up steps, cosine to 10 %),
  grad-norm clip 1, EMA 0.999 (the shipped weights are the EMA). DiT initialisation (xavier,
  zeroed adaLN modulation / output). Label dropout: diffusers' built-in per-block 0.1, plus a whole
  sample set to the null class with probability 0.1 (so the unconditional branch is trained).
- Final training loss (epsilon MSE, mean of the last 500 steps): {m['train_loss_final']:.4f};
  held-out epsilon MSE of the EMA weights (fixed noise): {m['held_out_loss']:.4f}.
- Training time: {m['dit_train_seconds'] / 60:.1f} min wall for the DiT ({m['total_train_seconds'] / 60:.1f} min for the whole
  script incl. classifier and evaluation), {m['threads']} torch thread(s), on a 2-core machine shared with
  other work ({m['machine']}); the DiT used {m['dit_train_cpu_seconds'] / 60:.1f} CPU-minutes, so about that many
  minutes on an otherwise idle machine.

## Classifier (`classifier.safetensors`)
- Small CNN (`dqar_bench.model.reference.network.DigitClassifier`: 3 conv layers, 2 max-pools,
  {m['classifier_feature_dim']}-d penultimate layer), trained on the training split (seed {m['seed']}, light noise augmentation).
- Held-out test accuracy: **{m['classifier_test_accuracy']:.4f}** ({m['held_out_size']} digits).
- Registered with torch-fidelity as feature extractor `{m['feature_extractor']}`; its pre-activation
  penultimate layer is the feature space for the Frechet distance (`frechet_distance`).

## Baseline quality
Sampling convention (same as the harness): x ~ N(0, I) from `torch.Generator().manual_seed({m['eval_seed']})`,
one batch of shape (200, 1, 8, 8), labels `arange(10).repeat(20)`, DDIM {m['inference_steps']} steps, model input
`cat([x, x])` with labels `cat([labels, 10])`, eps = eps_u + g (eps_c - eps_u), images clamped to [-1, 1].

- **Baseline, guidance g = {g}, {m['inference_steps']} DDIM steps: class accuracy {base['class_accuracy']:.3f}, classifier-feature
  Frechet distance vs the {m['held_out_size']} held-out digits {base['frechet_distance']:.3f}.**
- Floor for scale: 200 real training digits (20 per class) vs the held-out digits give
  {m['frechet_real_train_vs_held_out']:.3f}.
- Why g = {g} and not DiT's usual 4: with this model, class accuracy is saturated for every g >= 1,
  while the Frechet distance grows steeply with g (over-sharpened, low-diversity digits) and at
  g = 4 even *falls* when sampling is cut short, so it could not rank accelerated runs. At g = {g}
  it rises as steps are removed, and the null-class branch still matters (at g = 1 it cancels).

| guidance ({m['inference_steps']} steps) | class accuracy | Frechet distance |
|---|---|---|
{others}

| DDIM steps (g = {g}) | class accuracy | Frechet distance |
|---|---|---|
{sweep}

Small fixed sample used by `tests/test_reference.py`: the first {m['test_sample']['size']} of the batch above (same seed,
labels `arange(10).repeat(2)`, {m['test_sample']['inference_steps']} DDIM steps, g = {g}): class accuracy {m['test_sample']['class_accuracy']:.2f}.

## Retraining
```
{m['command']}
```
About {m['dit_train_cpu_seconds'] / 60 + 2:.0f} CPU-minutes in all; it rewrites every file in this folder. Add `--evaluate-only` to
recompute only the figures (metrics.json, this card) for the weights already here.
Deterministic for a given seed on the same CPU type, thread count and library versions
(torch {m['torch_version']}, diffusers {m['diffusers_version']}); elsewhere the figures may move slightly.
"""
    atomic_write_bytes(out_dir / MODEL_CARD_FILE, card.encode())


# --------------------------------------------------------------------------- entry point


TRAINING_KEYS = (
    "command", "seed", "threads", "machine", "torch_version", "diffusers_version", "resolution",
    "train_size", "held_out_size", "dit_config", "dit_parameters", "dit_steps", "batch_size", "lr",
    "train_loss_final", "held_out_loss", "dit_train_seconds", "dit_train_cpu_seconds",
    "classifier_test_accuracy", "classifier_feature_dim", "total_train_seconds",
)
"""metrics.json entries that describe training; `--evaluate-only` carries them over unchanged."""


def balanced_real_subset(split: DigitsSplit, per_class: int, seed: int) -> torch.Tensor:
    """Real training digits, `per_class` of each class: the Frechet floor must be class-balanced
    like the generated set, or class proportions alone would dominate the distance."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(split.train_labels == c).flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return split.train_images[torch.cat(picks)]


def main(argv: Sequence[str] | None = None) -> int:
    """Train classifier and DiT, evaluate, write weights + configs + metrics + model card."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="train_reference.py",
        description="Train the dqar-bench reference DiT and digit classifier on sklearn digits.",
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the shipped weights folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--steps", type=int, default=DEFAULT_DIT_STEPS, help="DiT optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads; 1 keeps the float reduction order (so the weights) independent of the "
             "machine's core count, and is the fastest choice on a busy machine",
    )
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="baseline guidance scale")
    parser.add_argument("--also-guidance", type=float, nargs="*", default=[1.0, 2.0, 4.0],
                        help="further guidance scales to report")
    parser.add_argument(
        "--evaluate-only", action="store_true",
        help="skip training: re-evaluate the weights already in --out and rewrite metrics.json and MODEL_CARD.md",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    split = load_digits_split(resolution=RESOLUTION)
    log(f"data: {split.train_images.shape[0]} train / {split.test_images.shape[0]} held-out at {RESOLUTION}x{RESOLUTION}")
    classifier_path = out_dir / CLASSIFIER_WEIGHTS_FILE

    if args.evaluate_only:
        from dqar_bench.model.reference.load import load_classifier, load_reference_dit, load_reference_metrics

        previous = load_reference_metrics(out_dir)
        training = {k: previous[k] for k in TRAINING_KEYS}
        classifier = load_classifier(out_dir)
        dit = load_reference_dit(out_dir)
        log(f"re-evaluating the weights in {out_dir} (trained by: {training['command']})")
    else:
        classifier, clf_acc = train_classifier(split, seed=args.seed, log=log)
        save_classifier(classifier, out_dir)
        log(f"classifier held-out accuracy {clf_acc:.4f} -> {classifier_path}")

        dit, stats = train_dit(split, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, log=log)
        save_dit(dit, out_dir)
        save_scheduler_config(DDIMScheduler.from_config(SCHEDULER_CONFIG), out_dir)
        log(f"dit trained in {stats['train_wall_seconds']:.0f}s, held-out loss {stats['held_out_loss']:.4f}")

        import diffusers

        training = {
            "command": _command([a for a in argv if a != "--evaluate-only"]),
            "seed": args.seed,
            "threads": args.threads,
            "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
            "resolution": RESOLUTION,
            "train_size": int(split.train_images.shape[0]),
            "held_out_size": int(split.test_images.shape[0]),
            "dit_config": DIT_CONFIG,
            "dit_parameters": sum(p.numel() for p in dit.parameters()),
            "dit_steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "train_loss_final": stats["train_loss_final"],
            "held_out_loss": stats["held_out_loss"],
            "dit_train_seconds": stats["train_wall_seconds"],
            "dit_train_cpu_seconds": stats["train_cpu_seconds"],
            "classifier_test_accuracy": clf_acc,
            "classifier_feature_dim": classifier.feature_dim,
            "total_train_seconds": time.perf_counter() - t_start,
        }

    scales = sorted({args.guidance, *args.also_guidance})
    evaluation = evaluate(dit, classifier, classifier_path, split, scales)
    for scale, v in evaluation.items():
        log(f"guidance {scale}, {DEFAULT_INFERENCE_STEPS} steps: class accuracy {v['class_accuracy']:.3f} "
            f"frechet {v['frechet_distance']:.3f}")
    steps_sweep = {}
    for n in SWEEP_INFERENCE_STEPS:
        v = evaluate(dit, classifier, classifier_path, split, [args.guidance], num_inference_steps=n)[f"{args.guidance:g}"]
        steps_sweep[str(n)] = v
        log(f"guidance {args.guidance:g}, {n} steps: class accuracy {v['class_accuracy']:.3f} "
            f"frechet {v['frechet_distance']:.3f}")

    test_labels = eval_labels(TEST_SAMPLE_PER_CLASS)
    test_images = sample_digits(dit, SCHEDULER_CONFIG, test_labels, EVAL_SEED, DEFAULT_INFERENCE_STEPS, args.guidance)
    with torch.no_grad():
        test_acc = float((classifier(test_images).argmax(1) == test_labels).double().mean().item())
    real = balanced_real_subset(split, EVAL_PER_CLASS, args.seed + 3)
    real_fd = frechet_distance(real, split.test_images, weights_path=classifier_path)

    metrics: dict[str, Any] = {
        **training,
        "feature_extractor": FEATURE_EXTRACTOR_NAME,
        "guidance_scale": args.guidance,
        "inference_steps": DEFAULT_INFERENCE_STEPS,
        "eval_seed": EVAL_SEED,
        "eval_per_class": EVAL_PER_CLASS,
        "evaluation": evaluation,
        "evaluation_fewer_steps": steps_sweep,
        "frechet_real_train_vs_held_out": real_fd,
        "test_sample": {
            "size": int(test_labels.shape[0]),
            "seed": EVAL_SEED,
            "inference_steps": DEFAULT_INFERENCE_STEPS,
            "guidance_scale": args.guidance,
            "class_accuracy": test_acc,
        },
    }
    write_json(out_dir / METRICS_FILE, metrics)
    write_model_card(out_dir, metrics)
    base = evaluation[f"{args.guidance:g}"]
    log(f"done: baseline (g={args.guidance:g}) class accuracy {base['class_accuracy']:.3f}, "
        f"frechet {base['frechet_distance']:.3f}, test sample accuracy {test_acc:.2f}; files in {out_dir}")
    return 0
