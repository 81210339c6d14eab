"""Model families as data: where a diffusers transformer keeps its blocks and how they flow.

A family is one `Family` entry in `FAMILIES`, not an adapter class. One generic adapter
(`dqar_bench.strategy.adapter`) reads the entry to put a strategy on the model, and the sampler
(`dqar_bench.model.sampling`) reads it to call the model. An entry says:

- which transformer classes it matches (and which diffusers pipeline runs them);
- where the blocks are: one list attribute or several (FLUX: `transformer_blocks`, then
  `single_transformer_blocks`); the strategy sees one flat, ordered list;
- how a block's streams flow: what it returns, in which order. `("hidden_states",)`: the
  image tokens alone (DiT, PixArt, Wan: the caption enters through cross-attention and
  passes unchanged). Two names: the block updates image and text tokens jointly and returns
  both, in that order (SD3 and FLUX return `(encoder_hidden_states, hidden_states)`,
  CogVideoX and HunyuanVideo `(hidden_states, encoder_hidden_states)`). The same names are
  read from the block's arguments, so a block-residual cache stores one residual per stream;
- the names of its self-attention, cross-attention and feed-forward submodules. Every name
  present in a block is hooked (FLUX dual blocks have `ff` and `ff_context`, its single
  blocks `proj_mlp`); a joint attention module that returns (image, text) outputs is cached
  as a pair;
- where block 0 modulates its input by the timestep (`modulation`: TeaCache's signal, with
  the rescale coefficients TeaCache publishes for the family's reference checkpoint);
- how the model is called: conditioning (class labels or text), the calling convention of
  `dqar_bench.model.inputs` (latent layout, packing, timestep scaling), guidance (CFG in one
  batch, CFG as two passes, or a guidance embedding with no CFG pass), default sampler and
  the noise schedule the pipeline ships with.

Adding a family is adding an entry (docs/models.md, "Adding a model family"); a transformer class
no entry matches fails in one line that says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch

from dqar_bench.core.errors import ModelError

HIDDEN: tuple[str, ...] = ("hidden_states",)
ENCODER_FIRST: tuple[str, ...] = ("encoder_hidden_states", "hidden_states")
HIDDEN_FIRST: tuple[str, ...] = ("hidden_states", "encoder_hidden_states")

Guidance = Literal["cfg-batch", "cfg-separate", "embedded"]
GUIDANCE_MODES: dict[str, str] = {
    "cfg-batch": "classifier-free guidance, conditional and unconditional halves in one batch",
    "cfg-separate": "classifier-free guidance as two model calls per step (each branch keeps its own caches)",
    "embedded": "the guidance scale is a model input (a distilled guidance embedding); one call, no CFG pass",
}


@dataclass(frozen=True)
class Blocks:
    """One list of transformer blocks: its attribute and what each block returns, in order."""

    attr: str
    returns: tuple[str, ...] = HIDDEN


@dataclass(frozen=True)
class Text:
    """How a text-conditioned family takes its caption: model input names and widths.

    Widths are config keys of the transformer. Without `mask` the padding tokens of a
    caption are zeros (as the Wan and CogVideoX pipelines pad); `length` pads every caption
    to a fixed number of tokens (a config key or a number), for models with fixed caption
    positions. `encoder` names a text encoder the harness itself can run for `prompts:`
    ("t5"); other families encode through their own pipeline.
    """

    width: str
    embeds: str = "encoder_hidden_states"
    mask: str | None = None
    pooled: str | None = None
    pooled_width: str | None = None
    length: str | int | None = None
    max_tokens: int = 120
    encoder: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Constant inputs of every call (PixArt's `added_cond_kwargs` with no micro-conditions)."""


NO_FIT = "none published: the raw relative L1 change"


@dataclass(frozen=True)
class Modulation:
    """Where block 0 of a family modulates its input by the timestep: TeaCache's signal.

    `module` is block 0's submodule that modulates and `recipe` how it is called
    (`dqar_bench.strategy.modulation.RECIPES`). `coefficients` is the polynomial (highest power
    first, as `numpy.poly1d`) that TeaCache fits per model to map the input's relative L1
    change to the output's; `source` says whose fit it is. (1, 0) is the identity: no
    published fit for this family.
    """

    module: str
    recipe: str
    coefficients: tuple[float, ...] = (1.0, 0.0)
    source: str = NO_FIT
    warmup: int = 1
    """Leading steps the official script computes with this fit (its `ret_steps`)."""
    compute_last: bool = True
    """The official script computes the last step with this fit (its `cutoff_steps`)."""
    fits: tuple[tuple[str, tuple[float, ...], str], ...] = ()
    """(config field, coefficients, source): the first fit whose field the model's config sets
    replaces `coefficients` (CogVideoX: the reference picks its fit by checkpoint; here by the
    structure that tells those checkpoints apart)."""

    @property
    def fitted(self) -> bool:
        """TeaCache publishes a rescale fit for this family (else the identity stands in)."""
        return self.source != NO_FIT

    def resolved(self, config: Mapping[str, Any] | None) -> "Modulation":
        """This modulation with the fit chosen for a model of `config`."""
        for key, coefficients, source in self.fits:
            if config and config.get(key):
                return dataclasses.replace(self, coefficients=coefficients, source=source, fits=())
        return self


@dataclass(frozen=True)
class Family:
    """A model family: one entry of `FAMILIES` (see the module docstring for every field)."""

    name: str
    classes: tuple[str, ...]
    blocks: tuple[Blocks, ...]
    description: str = ""
    pipeline: str = ""
    """The diffusers pipeline class that runs this family (also picks the family of a checkpoint)."""
    attention: tuple[str, ...] = ("attn1",)
    cross_attention: tuple[str, ...] = ()
    mlp: tuple[str, ...] = ("ff",)
    text: Text | None = None
    """None: class-conditioned (labels); else how captions enter the model."""
    inputs: str = "image"
    """Calling convention (`dqar_bench.model.inputs.CONVENTIONS`): image, packed, video, frames-first."""
    sampler: str = "ddim"
    guidance: Guidance = "cfg-batch"
    guidance_input: float = 1.0
    """With `embedded` guidance: the model input is guidance_scale times this (HunyuanVideo: 1000)."""
    sigmas: str = "scheduler"
    """Flow-matching sigma schedule as the pipeline sets it (`dqar_bench.model.sampling.SIGMA_SCHEDULES`)."""
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    """The noise schedule the family's pipeline ships with (checkpoints carry their own)."""
    latent_size: tuple[int, ...] = ()
    """Latent (frames,) height, width of the pipeline's default resolution, where the config does not say."""
    own_attention: bool = False
    """The model's self-attention is diffusers' AttnProcessor2_0, which `dqar_bench.strategy.attention`
    reproduces bit for bit; caches that keep Q/K/V (`kv`) need that."""
    names: tuple[str, ...] = ()
    """Lower-case substrings of checkpoint ids that suggest this family when no config is on disk."""
    modulation: Modulation | str = "the family entry names no block-0 modulation (Family.modulation)"
    modulation_modes: Mapping[str, Modulation] = field(default_factory=dict)
    """Other official TeaCache modes of the family, by name (Wan: `e`, the time embedding with
    its own fit); TeaCache's `mode` picks one, `modulation` is the default."""
    """Block 0's timestep modulation (`Modulation`), or why the family has none: a gate that
    reads it (TeaCache) is refused there with that reason."""

    @property
    def conditioning(self) -> str:
        return "labels" if self.text is None else "text"

    @property
    def video(self) -> bool:
        """Its latents have frames: [batch, channels, frames, h, w]."""
        return self.inputs in ("video", "frames-first")

    def modulation_for(self, mode: str | None, config: Mapping[str, Any] | None = None) -> Modulation | str:
        """The block-0 modulation TeaCache reads in `mode` (None: the default) on a model of
        `config`, with its fit chosen; or why there is none (one line)."""
        if mode is None:
            chosen = self.modulation
        elif mode in self.modulation_modes:
            chosen = self.modulation_modes[mode]
        else:
            modes = ", ".join(self.modulation_modes) or "none"
            return f"family '{self.name}' has no TeaCache mode '{mode}' (its other official modes: {modes}); remove 'mode'"
        return chosen.resolved(config) if isinstance(chosen, Modulation) else chosen

    def refusal(self, part: type) -> str | None:
        """Why a part cannot run on this family (one line), or None. Read from the class only."""
        name = getattr(part, "PLUGIN_NAME", part.__name__)
        if getattr(part, "DECIDES_AFTER_BLOCK", None) == -1 and not isinstance(self.modulation, Modulation):
            return f"gate '{name}' reads block 0's timestep-modulated input; family '{self.name}': {self.modulation}"
        if getattr(part, "KIND", "") != "cache":
            return None
        target = getattr(part, "TARGET", None)
        if target == "cross-attention" and not self.cross_attention:
            hosts = ", ".join(f.name for f in FAMILIES if f.cross_attention)
            return (
                f"family '{self.name}' has no cross-attention module (families with one: {hosts}), "
                f"so cache '{name}' (target cross-attention) has nothing to hook"
            )
        if getattr(part, "NEEDS_QKV", False) and not self.own_attention:
            return (
                f"cache '{name}' computes self-attention itself (it keeps Q, K, V), which matches the model only for "
                f"AttnProcessor2_0 families (dit, pixart); family '{self.name}' attends with its own processor "
                f"(joint text tokens, rotary embeddings)"
            )
        return None

    def block_lists(self, model: torch.nn.Module) -> list[tuple[Blocks, list[torch.nn.Module]]]:
        """Each block list of `model` with its modules, in the order a forward runs them."""
        out = []
        for spec in self.blocks:
            found = getattr(model, spec.attr, None)
            if found is None:
                raise ModelError(f"{type(model).__name__} has no block list '{spec.attr}' that family '{self.name}' names")
            out.append((spec, list(found)))
        return out


# --- the noise schedules the pipelines ship with ------------------------------------------

DDPM_LINEAR: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
}
"""DiT's and PixArt's: 1000 steps, linear betas, epsilon prediction."""

COGVIDEOX_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "timestep_spacing": "trailing",
    "snr_shift_scale": 3.0,
}
"""CogVideoX-2b's: v-prediction on zero-terminal-SNR betas, shifted SNR (CogVideoXDDIMScheduler)."""


def flow_schedule(shift: float, dynamic: bool = False) -> dict[str, Any]:
    """A FlowMatchEulerDiscreteScheduler config: a fixed `shift`, or mu from the image size."""
    config: dict[str, Any] = {"num_train_timesteps": 1000, "shift": shift}
    if dynamic:
        config.update(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return config


# --- the table ------------------------------------------------------------------------------

NO_MICRO_CONDITIONS = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

FAMILIES: tuple[Family, ...] = (
    Family(
        name="dit",
        description="class-conditional DiT (Peebles & Xie), learned sigma",
        classes=("DiTTransformer2DModel",),
        pipeline="DiTPipeline",
        blocks=(Blocks("transformer_blocks"),),
        scheduler=DDPM_LINEAR,
        own_attention=True,
        names=("dit",),
        modulation=Modulation("norm1", "dit-ada-norm-zero"),
    ),
    Family(
        name="pixart",
        description="PixArt-alpha: a text-conditioned DiT (self-attention, cross-attention over T5 captions)",
        classes=("PixArtTransformer2DModel",),
        pipeline="PixArtAlphaPipeline",
        blocks=(Blocks("transformer_blocks"),),
        cross_attention=("attn2",),
        text=Text(width="caption_channels", mask="encoder_attention_mask", max_tokens=120, encoder="t5", extra=NO_MICRO_CONDITIONS),
        scheduler=DDPM_LINEAR,
        own_attention=True,
        names=("pixart",),
        modulation=Modulation("norm1", "scale-shift-table"),
    ),
    Family(
        name="pixart-sigma",
        description="PixArt-Sigma: PixArt's DiT with T5 captions up to 300 tokens",
        classes=("PixArtTransformer2DModel",),
        pipeline="PixArtSigmaPipeline",
        blocks=(Blocks("transformer_blocks"),),
        cross_attention=("attn2",),
        text=Text(width="caption_channels", mask="encoder_attention_mask", max_tokens=300, encoder="t5", extra=NO_MICRO_CONDITIONS),
        sampler="dpm-solver",
        scheduler=DDPM_LINEAR,
        own_attention=True,
        names=("pixart-sigma",),
        modulation=Modulation("norm1", "scale-shift-table"),
    ),
    Family(
        name="sd3",
        description="Stable Diffusion 3 / 3.5 MMDiT: joint image-text blocks, flow matching",
        classes=("SD3Transformer2DModel",),
        pipeline="StableDiffusion3Pipeline",
        blocks=(Blocks("transformer_blocks", ENCODER_FIRST),),
        attention=("attn", "attn2"),
        mlp=("ff", "ff_context"),
        text=Text(width="joint_attention_dim", pooled="pooled_projections", pooled_width="pooled_projection_dim", max_tokens=333),
        sampler="flow-euler",
        scheduler=flow_schedule(3.0),
        names=("stable-diffusion-3", "sd3"),
        modulation=Modulation("norm1", "ada-norm-zero"),
    ),
    Family(
        name="flux",
        description="FLUX.1: dual-stream then single-stream blocks, packed latents, guidance embedding",
        classes=("FluxTransformer2DModel",),
        pipeline="FluxPipeline",
        blocks=(Blocks("transformer_blocks", ENCODER_FIRST), Blocks("single_transformer_blocks", ENCODER_FIRST)),
        attention=("attn",),
        mlp=("ff", "ff_context", "proj_mlp"),
        text=Text(width="joint_attention_dim", pooled="pooled_projections", pooled_width="pooled_projection_dim", max_tokens=512),
        inputs="packed",
        sampler="flow-euler",
        guidance="embedded",
        sigmas="1..1/n",
        scheduler=flow_schedule(3.0, dynamic=True),
        latent_size=(128, 128),
        names=("flux",),
        modulation=Modulation(
            "norm1", "ada-norm-zero", (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01),
            "TeaCache4FLUX (FLUX.1-dev; teacache_flux.py line 113; lines 109-116: first and last steps computed)",
        ),
    ),
    Family(
        name="wan",
        description="Wan 2.1 text-to-video: self-attention with 3-D RoPE, cross-attention over umT5 captions",
        classes=("WanTransformer3DModel",),
        pipeline="WanPipeline",
        blocks=(Blocks("blocks"),),
        cross_attention=("attn2",),
        mlp=("ffn",),
        text=Text(width="text_dim", length=512, max_tokens=512),
        inputs="video",
        sampler="flow-euler",
        guidance="cfg-separate",
        scheduler=flow_schedule(3.0),
        latent_size=(21, 60, 104),
        names=("wan",),
        # ali-vilab/TeaCache@7c10efc4, TeaCache4Wan2.1/teacache_generate.py: line 520 picks the input
        # (e0 with use_ret_steps, else e), lines 881-894 the T2V-1.3B fits and ret_steps / cutoff_steps
        modulation=Modulation(
            "norm1", "timestep-embedding", (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
            "TeaCache4Wan2.1 retention mode (T2V-1.3B, use_ret_steps: e0, the blocks' temb; teacache_generate.py lines 881-887: "
            "first 5 steps computed, the last not forced)",
            warmup=5, compute_last=False,
        ),
        modulation_modes={"e": Modulation(
            "condition_embedder.time_embedder", "model-output",
            (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
            "TeaCache4Wan2.1 e mode (T2V-1.3B, the time embedding e; teacache_generate.py lines 888-894: first step computed, "
            "the last forced)",
        )},
    ),
    Family(
        name="cogvideox",
        description="CogVideoX: joint video-text expert blocks, v-prediction, frames-first latents",
        classes=("CogVideoXTransformer3DModel",),
        pipeline="CogVideoXPipeline",
        blocks=(Blocks("transformer_blocks", HIDDEN_FIRST),),
        text=Text(width="text_embed_dim", length="max_text_seq_length", max_tokens=226),
        inputs="frames-first",
        scheduler=COGVIDEOX_SCHEDULE,
        names=("cogvideox",),
        modulation=Modulation(
            "norm1", "timestep-embedding", (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03),
            "TeaCache4CogVideoX1.5 (CogVideoX-2b, no rotary embeddings; teacache_sample_video.py line 10; the time embedding "
            "emb, the blocks' temb)",
            # ali-vilab/TeaCache@7c10efc4, TeaCache4CogVideoX1.5/teacache_sample_video.py lines 9-14: CogVideoX1.5
            # (temporal patches) and CogVideoX-5b (rotary embeddings) have their own fits
            fits=(
                ("patch_size_t", (2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02),
                 "TeaCache4CogVideoX1.5 (CogVideoX1.5-5B: temporal patches; teacache_sample_video.py line 13)"),
                ("use_rotary_positional_embeddings", (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
                 "TeaCache4CogVideoX1.5 (CogVideoX-5b: rotary embeddings; teacache_sample_video.py line 11)"),
            ),
        ),
    ),
    Family(
        name="hunyuan-video",
        description="HunyuanVideo: dual-stream then single-stream blocks, guidance embedding, flow matching",
        classes=("HunyuanVideoTransformer3DModel",),
        pipeline="HunyuanVideoPipeline",
        blocks=(Blocks("transformer_blocks", HIDDEN_FIRST), Blocks("single_transformer_blocks", HIDDEN_FIRST)),
        attention=("attn",),
        mlp=("ff", "ff_context", "proj_mlp"),
        text=Text(width="text_embed_dim", mask="encoder_attention_mask", pooled="pooled_projections",
                  pooled_width="pooled_projection_dim", max_tokens=256),
        inputs="video",
        sampler="flow-euler",
        guidance="embedded",
        guidance_input=1000.0,
        sigmas="1..0",
        scheduler=flow_schedule(7.0),
        latent_size=(33, 90, 160),
        names=("hunyuanvideo", "hunyuan-video"),
        modulation=Modulation(
            "norm1", "ada-norm-zero", (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02),
            "TeaCache4HunyuanVideo (HunyuanVideo 720p; teacache_sample_video.py line 102; line 98: first and last steps computed)",
        ),
    ),
    Family(
        name="sana",
        description="Sana: linear-attention DiT (ReLU kernel), cross-attention over Gemma captions, Mix-FFN, flow matching",
        classes=("SanaTransformer2DModel",),
        pipeline="SanaPipeline",
        blocks=(Blocks("transformer_blocks"),),
        cross_attention=("attn2",),
        text=Text(width="caption_channels", mask="encoder_attention_mask", max_tokens=300),
        sampler="flow-euler",
        scheduler=flow_schedule(3.0),
        latent_size=(32, 32),
        names=("sana",),
        modulation=Modulation("norm1", "scale-shift-table"),
    ),
)


def names() -> list[str]:
    return [f.name for f in FAMILIES]


def get(name: str) -> Family:
    """The entry named `name`."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ModelError(f"unknown model family '{name}' (families: {', '.join(names())})")


def for_class(class_name: str, pipeline: str | None = None) -> Family | None:
    """The entry for a transformer class: the first listed, or the one whose pipeline is `pipeline`."""
    matches = [f for f in FAMILIES if class_name in f.classes]
    if pipeline is not None:
        matches = [f for f in matches if f.pipeline == pipeline] or matches
    return matches[0] if matches else None


def for_pipeline(pipeline: str) -> Family | None:
    return next((f for f in FAMILIES if f.pipeline == pipeline), None)


def guess(checkpoint: str) -> Family | None:
    """A family from a checkpoint id alone (no config on disk): the entry with the longest matching `names`."""
    lowered = checkpoint.lower()
    found = [(len(n), i, f) for i, f in enumerate(FAMILIES) for n in f.names if n in lowered]
    return max(found, key=lambda x: (x[0], -x[1]))[2] if found else None


def family_of(model: torch.nn.Module) -> Family:
    """The entry for a transformer: a `dqar_family` attribute (a family name) or its class.

    The class and its bases are matched by name, so a subclass of a diffusers transformer
    finds its parent's entry.
    """
    named = getattr(model, "dqar_family", None)
    if named is not None:
        return get(named)
    for cls in type(model).__mro__:
        found = for_class(cls.__name__)
        if found is not None:
            return found
    raise ModelError(
        f"no model family matches {type(model).__name__}; add a Family entry for it to FAMILIES in "
        f"dqar_bench/model/families.py (docs/models.md, 'Adding a model family'); families: {', '.join(names())}"
    )
