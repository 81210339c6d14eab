"""A model run through its own diffusers pipeline: `model: {pipeline: <checkpoint id or folder>}`.

The lean loop (`dqar_bench.model.sampling`) is the harness's own rewrite of each pipeline's
arithmetic; this path runs the pipeline itself (DiTPipeline, PixArtSigmaPipeline,
StableDiffusion3Pipeline, FluxPipeline, WanPipeline) with the case's strategy installed on
`pipe.transformer`, so a user can check that what the harness measures is what their
pipeline does. It plugs into the same `CaseRun` machinery (warmup, scored calls, FLOPs,
interleaved rounds, records, `--resume` keys); only the sampling call differs.

How the strategy learns the step. It needs, before every transformer call, what the lean
loop hands it: the step index, timestep, latents and the x0 of the previous step, and with
two-pass guidance (Wan) which branch runs. `callback_on_step_end` cannot give that: it
fires after the scheduler step (too late for step 0), DiTPipeline has none, and it never
sees the guided prediction x0 is derived from. So two hooks are installed for the length
of one pipeline call (`StepHooks`), and only when a strategy is (the untouched baseline
runs the bare pipeline):

- the pipeline's scheduler `step` is wrapped (an instance attribute, deleted after): the
  step index is the number of scheduler steps taken in this call, and the wrapper derives
  x0 from the guided prediction and the latents exactly as the lean loop does;
- a forward pre-hook on `pipe.transformer`: the first model call of a step starts the step
  (`Strategy.before_step`, with the latents the model was given, in the sampler's layout),
  a second call in the same step is the unconditional branch (`Strategy.branch(1)`).

What is the same as the lean path, so the two paths compare (tests/test_pipelines.py):
the suite's sampler is made from the pipeline's scheduler config and put on the pipeline
(`sampler: flow-euler` means FlowMatchEulerDiscreteScheduler on both paths, also for Wan,
whose checkpoints ship UniPC); the noise is drawn as the lean loop draws it (CPU
generator, the seed) and handed over as `latents` (DiTPipeline takes none: it draws from
the same CPU generator itself, which is the same noise in float32); the resolution is the
model's latent shape (its config, else the family's default, which is each pipeline's own
default); captions are encoded once, before anything is timed, by the pipeline's own
`encode_prompt` (`prompts:`), or read from an embeddings file or made synthetic, and
passed to every call as `prompt_embeds` (and pooled embeddings, masks, negatives).

What differs: a pipeline call ends with the VAE decode (`output_type="pt"`), so its time
and FLOPs include decoding, and its outputs are the decoded images (`[batch, 3, H, W]`) or
videos (`[batch, 3, frames, H, W]`) in [0, 1], which quality reads as images. It runs
eagerly only (the pipeline calls its transformer itself): a `compile` or `cudagraph` case
is recorded as unsupported. PixArt-Sigma runs without resolution binning (the size is the
model's own). Each pipeline keeps its own arithmetic where the lean loop differs only in
rounding: with CFG in one batch the pipelines put the unconditional half first (the lean
loop the conditional; the same images on the tiny models), DiTPipeline and WanPipeline scale
latents for the VAE by a reciprocal, and WanPipeline keeps its latents in float32 in a
half-precision run (the lean loop in the model's dtype). Nothing is downloaded:
`from_pretrained(..., local_files_only=True)`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.core.weights import weights_only_loads
from dqar_bench.model import families
from dqar_bench.model.conditioning import captions_condition
from dqar_bench.model.families import Family
from dqar_bench.model.inputs import convention
from dqar_bench.model.loaded import LoadedModel, first_line, local_json
from dqar_bench.model.sampling import (
    Condition,
    StepObserver,
    guidance_mode,
    latents_shape,
    noise_levels,
    num_blocks,
    predicted_x0,
    prediction_of,
    step_context,
)

PIPELINES: tuple[str, ...] = ("DiTPipeline", "PixArtSigmaPipeline", "StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline")
"""The pipelines this path runs (the family of each is found from its transformer's class)."""

EAGER_ONLY = "the pipeline path runs eagerly (the pipeline calls its transformer itself); run the lean path for compiled or graphed cases"


def pipeline_refusal(family: Family | None, pipeline_class: str | None = None) -> str | None:
    """Why this path cannot run a checkpoint (one line), or None."""
    name = pipeline_class or (family.pipeline if family is not None else None)
    if name is not None and name not in PIPELINES:
        return f"the pipeline path runs {', '.join(PIPELINES)}; this checkpoint's pipeline is {name} (run it on the lean path: `model: <id or folder>`)"
    return None


def require_transformers() -> None:
    """Text encoders need `transformers`, an optional extra."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError("field 'model.pipeline': a text-conditioned pipeline needs `transformers` (its text encoders): pip install 'dqar-bench[text]'") from None


def load_pipeline(source: str, device: torch.device, dtype: torch.dtype, text_encoders: bool = False) -> Any:
    """The checkpoint's pipeline, offline, on `device` in `dtype`, as a `loaded.LoadedModel`.

    Text encoders and tokenizers are loaded only when prompts are to be encoded
    (`text_encoders`); they are freed once that is done (`encode_prompts`).
    """
    import diffusers

    index = local_json(source, "model_index.json")
    if index is None:
        raise ModelError(
            f"field 'model.pipeline': '{source}' is not a diffusers pipeline on this machine (no model_index.json in the folder "
            f"or the local Hugging Face cache); download it first (`hf download {source}`); nothing is downloaded here"
        )
    reason = pipeline_refusal(None, str(index.get("_class_name")))
    if reason:
        raise ModelError(f"field 'model.pipeline': {reason}")
    text_parts = [k for k in index if k.startswith(("text_encoder", "tokenizer"))]
    if text_parts:  # the text pipelines' modules import transformers, even with their encoders left out
        require_transformers()
    # parts saved as None are passed as None; text encoders are left out unless prompts need them
    skip = {k: None for k, v in index.items() if v == [None, None] or (k in text_parts and not text_encoders)}
    try:
        with weights_only_loads(), _fp32_kept_moot(index, dtype), _no_progress_bars():  # .bin pickles are read as data, never run
            pipe = diffusers.DiffusionPipeline.from_pretrained(source, local_files_only=True, torch_dtype=dtype, **skip)
    except ImportError as exc:
        raise ModelError(f"field 'model.pipeline': '{source}' needs a package that is missing: {first_line(exc)}") from None
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(f"field 'model.pipeline': '{source}' has no loadable pipeline: {first_line(exc)}") from None
    family = families.for_class(type(pipe.transformer).__name__, type(pipe).__name__)
    if family is None:
        families.family_of(pipe.transformer)  # the one-line error naming the class
    assert family is not None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer.eval().requires_grad_(False)
    transformer.dqar_family = family.name
    config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return LoadedModel(source, transformer, config, None, family.name, source, pipeline=pipe)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """diffusers' loading bar would bury a one-line error (and fills logs)."""
    from diffusers.utils import logging as diffusers_logging

    was = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            diffusers_logging.enable_progress_bar()


@contextlib.contextmanager
def _fp32_kept_moot(index: dict[str, Any], dtype: torch.dtype) -> Iterator[None]:
    """Load in float32 without `accelerate`: diffusers refuses a model that keeps modules in
    float32 (Wan) unless accelerate loads it, though in float32 keeping them so changes
    nothing; so for that load only, the model classes of the index say they keep none."""
    import importlib.util

    import diffusers

    classes = []
    if dtype == torch.float32 and importlib.util.find_spec("accelerate") is None:
        for value in index.values():
            if isinstance(value, list) and len(value) == 2 and value[0] == "diffusers":
                cls = getattr(diffusers, str(value[1]), None)
                if cls is not None and "_keep_in_fp32_modules" in cls.__dict__ and cls._keep_in_fp32_modules:
                    classes.append((cls, cls._keep_in_fp32_modules))
    for cls, _ in classes:
        cls._keep_in_fp32_modules = None
    try:
        yield
    finally:
        for cls, kept in classes:
            cls._keep_in_fp32_modules = kept


# --- prompts ------------------------------------------------------------------------------

def encode_prompts(model: Any, prompts: list[str], device: torch.device, dtype: torch.dtype) -> Condition:
    """The prompts through the pipeline's own `encode_prompt` (once, before anything is
    timed), with the empty prompt as the unconditional branch, as every pipeline makes it by
    default; then the text encoders are dropped. `cond_len` is the longest prompt in tokens
    of the pipeline's T5-family tokenizer (the captions the gates see)."""
    pipe, family = model.pipeline, model.spec
    text = family.text
    if text is None:
        raise ModelError(f"field 'prompts': model '{model.name}' is class-conditioned; use 'class_labels'")
    missing = [k for k in ("text_encoder", "tokenizer") if getattr(pipe, k, None) is None]
    if missing:
        raise ModelError(
            f"field 'prompts': pipeline '{model.name}' has no {' or '.join(missing)} on disk to encode them; "
            f"give 'prompt_embeddings' (a .safetensors file, see conditioning.save_embeddings) or 'prompt_lengths' instead"
        )
    n = len(prompts)
    pooled = null_pooled = mask = null_mask = None
    with torch.no_grad():
        if family.name == "sd3":
            embeds, null, pooled, null_pooled = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=True)
            tokenizer = pipe.tokenizer_3 or pipe.tokenizer
        elif family.name == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=device)
            null, null_pooled, _ = pipe.encode_prompt([""] * n, None, device=device)
            tokenizer = pipe.tokenizer_2 or pipe.tokenizer
        elif family.name == "wan":
            embeds, null = pipe.encode_prompt(prompts, do_classifier_free_guidance=True, max_sequence_length=text.max_tokens, device=device)
            tokenizer = pipe.tokenizer
        elif family.name == "pixart-sigma":
            embeds, mask, null, null_mask = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=True, device=device, clean_caption=False, max_sequence_length=text.max_tokens
            )
            tokenizer = pipe.tokenizer
        else:
            raise ModelError(f"field 'prompts': the pipeline path encodes prompts for {', '.join(PIPELINES[1:])}, not {family.pipeline}")
    if mask is None:  # no mask input: the embeddings go to the model as the pipeline made them (x 1)
        mask, null_mask = torch.ones(embeds.shape[:2], device=device), torch.ones(null.shape[:2], device=device)
    condition = captions_condition(embeds.to(dtype), mask, null.to(dtype), null_mask, text,
                                   pooled.to(dtype) if pooled is not None else None,
                                   null_pooled.to(dtype) if null_pooled is not None else None)
    tokens = condition.cond_len
    if tokenizer is not None and family.name != "pixart-sigma":
        ids = tokenizer(prompts, padding=False, truncation=True, max_length=text.max_tokens).input_ids
        tokens = max(len(i) for i in ids)
    for name in [k for k in pipe.components if k.startswith(("text_encoder", "tokenizer"))]:
        setattr(pipe, name, None)  # encoded once: the encoders' memory is freed
    return Condition(condition.batch, condition.inputs, condition.null_inputs, cond_len=tokens)


def pipeline_kwargs(family: Family, condition: Condition, mode: str, guidance_scale: float) -> dict[str, Any]:
    """A `Condition` (the model's input names) as the pipeline's arguments: labels, or
    `prompt_embeds`, pooled embeddings, masks and, with guidance, their negatives."""
    if family.text is None:
        return {"class_labels": [int(c) for c in condition.inputs["class_labels"].tolist()]}
    text = family.text
    names = {text.embeds: "prompt_embeds", text.pooled: "pooled_prompt_embeds", text.mask: "prompt_attention_mask"}
    out: dict[str, Any] = {}
    negative = mode in ("cfg-batch", "cfg-separate")
    for key, arg in names.items():
        if key is None:
            continue
        out[arg] = condition.inputs[key]
        if negative:
            out[f"negative_{arg}"] = condition.null_inputs[key]
    if family.name == "pixart-sigma" and negative:
        out["negative_prompt"] = None  # its default "" may not come with negative_prompt_embeds
    if family.name == "flux" and mode == "cfg-separate":  # a checkpoint without guidance embedding: FluxPipeline's true CFG
        out["true_cfg_scale"] = guidance_scale
    return out


# --- one call -------------------------------------------------------------------------------

@torch.no_grad()
def call_pipeline(
    model: Any,
    scheduler: Any,
    condition: Condition,
    seed: int,
    num_steps: int,
    guidance_scale: float,
    observer: StepObserver | None = None,
) -> torch.Tensor:
    """One sampling call through the pipeline: decoded images [batch, 3, H, W] or videos
    [batch, 3, frames, H, W] in [0, 1], float32 on the CPU."""
    pipe, family = model.pipeline, model.spec
    transformer = pipe.transformer
    param = next(transformer.parameters())
    shape = latents_shape(transformer)
    conv = convention(family)
    mode = guidance_mode(family, transformer.config, guidance_scale)
    pipe.scheduler = scheduler
    kwargs: dict[str, Any] = dict(num_inference_steps=num_steps, guidance_scale=guidance_scale, output_type="pt", return_dict=False)
    kwargs.update(pipeline_kwargs(family, condition, mode, guidance_scale))
    if family.name == "dit":
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    else:
        noise = conv.noise(seed, condition.batch, shape).to(device=param.device, dtype=param.dtype)
        kwargs["latents"] = conv.to_model(noise)
        kwargs.update(_size(pipe, family, shape))
    if family.name == "pixart-sigma":
        kwargs["use_resolution_binning"] = False  # the model's own size, as the lean path samples it
    hooks = StepHooks(pipe, family, observer, condition, shape, mode) if observer is not None else None
    if hooks is not None:
        hooks.install()
    try:
        out = pipe(**kwargs)[0]
    finally:
        if hooks is not None:
            hooks.remove()
    if family.video:  # the video processor gives [batch, frames, 3, H, W]
        out = out.transpose(1, 2)
    return out.float().cpu()


def _size(pipe: Any, family: Family, shape: tuple[int, ...]) -> dict[str, int]:
    """height, width (and num_frames) in pixels for latents of `shape`, by the pipeline's own VAE factors."""
    if family.video:
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        return {"num_frames": (shape[1] - 1) * temporal + 1, "height": shape[-2] * spatial, "width": shape[-1] * spatial}
    factor = pipe.vae_scale_factor
    return {"height": shape[-2] * factor, "width": shape[-1] * factor}


class StepHooks:
    """What the lean loop tells a strategy, told from inside one pipeline call (module docstring)."""

    def __init__(self, pipe: Any, family: Family, observer: StepObserver, condition: Condition, shape: tuple[int, ...], mode: str) -> None:
        self.pipe, self.family, self.observer = pipe, family, observer
        self.batch, self.cond_len, self.shape, self.mode = condition.batch, condition.cond_len, shape, mode
        self.conv = convention(family)
        self.step = 0
        self.calls = 0
        self.x0: torch.Tensor | None = None
        self.timesteps: list[int] = []
        self._handle: Any = None
        self._scheduler: Any = None

    def install(self) -> None:
        self._handle = self.pipe.transformer.register_forward_pre_hook(self._before_call, with_kwargs=True)
        self._scheduler = self.pipe.scheduler
        self._original_step = self._scheduler.step
        self._scheduler.step = self._step

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._scheduler is not None and "step" in self._scheduler.__dict__:
            del self._scheduler.step

    def _sampler_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A pipeline tensor (packed, or CFG-doubled) as the lean loop holds it: [batch, C, (F,) H, W]."""
        return self.conv.from_model(x, self.shape)[: self.batch]

    def _before_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        scheduler = self._scheduler
        if self.calls == 0:
            if self.step == 0:
                self.timesteps = [round(float(t)) for t in scheduler.timesteps.tolist()]
                more = {"branches": 2} if self.mode == "cfg-separate" else {}
                device = next(module.parameters()).device
                noise = noise_levels(scheduler, self.timesteps, prediction_of(scheduler))
                self.observer.begin(len(self.timesteps), num_blocks(module), device, timesteps=self.timesteps, noise=noise, **more)
            hidden = args[0] if args else kwargs["hidden_states"]
            latents = self._sampler_layout(hidden)
            self.observer.before_step(step_context(scheduler, self.step, self.timesteps, latents, self.x0, self.cond_len, prediction_of(scheduler)))
        elif hasattr(self.observer, "branch"):
            self.observer.branch(self.calls)
        self.calls += 1

    def _step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        scheduler = self._scheduler
        if getattr(self.observer, "wants_x0", True):  # a strategy whose gates never read x0 pays nothing for it
            prediction = prediction_of(scheduler)
            latents, pred = self._sampler_layout(sample), self._sampler_layout(model_output)
            sigma = scheduler.sigmas[self.step] if prediction == "flow" else None
            alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(latents.device) if prediction != "flow" else None  # one value moved, not the table
            self.x0 = predicted_x0(prediction, latents, pred, alpha_bar, sigma).to(latents.dtype)
        out = self._original_step(model_output, timestep, sample, *args, **kwargs)
        self.observer.after_step()
        self.step += 1
        self.calls = 0
        return out

