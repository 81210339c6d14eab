"""Tiny diffusers pipelines of every family the pipeline path runs, built in code and saved.

Each pipeline holds the transformer (and VAE) of the family's tiny built-in model, so the
same weights run on the lean path (`model: <tiny model>`) and through the pipeline
(`model: {pipeline: <folder>}`). By default no text encoders (`text_encoder=None`): captions
reach both paths as the same embeddings. `text_encoders=True` adds each pipeline's own
encoder classes, tiny, with random weights from fixed seeds (`transformers` configs: CLIP-L
and CLIP-G with projection and T5 for SD3, CLIP and T5 for FLUX, T5 for PixArt-Sigma, UMT5
for Wan), and word-level tokenizers written in code (a `tokenizers` WordLevel model over
`WORDS` in a `PreTrainedTokenizerFast`, appending the end token as T5's and CLIP's do), for
`prompts:` through the pipeline's own `encode_prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.model import families, models


def _flow_scheduler(family: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(families.get(family).scheduler))


def dit_pipeline() -> Any:
    """dit-tiny's config with 1000 classes (DiTPipeline guides with class 1000 as its null label) and a tiny VAE."""
    from diffusers import DDIMScheduler, DiTPipeline

    loaded = models._random_dit("dit-tiny-1000", **{**models.DIT_TINY_CONFIG, "num_embeds_ada_norm": 1000})
    return DiTPipeline(transformer=loaded.transformer, vae=models._tiny_vae(0.18215), scheduler=DDIMScheduler.from_config(families.DDPM_LINEAR))


def pixart_sigma_pipeline(text_encoders: bool = False) -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    m = models.build_pixart_sigma_tiny()
    encoder, tokenizer = (_t5(int(m.transformer.config.caption_channels)), word_tokenizer(300)) if text_encoders else (None, None)
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=m.vae, transformer=m.transformer,
                               scheduler=DPMSolverMultistepScheduler.from_config(families.DDPM_LINEAR))


def sd3_pipeline(text_encoders: bool = False) -> Any:
    from diffusers import StableDiffusion3Pipeline

    m = models.build_sd3_tiny()
    text: dict[str, Any] = {k: None for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")}
    if text_encoders:  # CLIP-L and CLIP-G: 8 wide each, pooled 8 + 8 = the transformer's 16; T5 as wide as its captions
        pooled = int(m.transformer.config.pooled_projection_dim) // 2
        text = {"text_encoder": _clip(pooled, seed=1, projection=True), "tokenizer": word_tokenizer(CLIP_TOKENS),
                "text_encoder_2": _clip(pooled, seed=2, projection=True), "tokenizer_2": word_tokenizer(CLIP_TOKENS),
                "text_encoder_3": _t5(int(m.transformer.config.joint_attention_dim)), "tokenizer_3": word_tokenizer(256)}
    return StableDiffusion3Pipeline(transformer=m.transformer, scheduler=_flow_scheduler("sd3"), vae=m.vae, **text)


def flux_pipeline(text_encoders: bool = False) -> Any:
    from diffusers import FluxPipeline

    m = models.build_flux_tiny()
    text: dict[str, Any] = {k: None for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    if text_encoders:  # CLIP's pooled output is the pooled embedding, T5's hidden states the captions
        text = {"text_encoder": _clip(int(m.transformer.config.pooled_projection_dim), seed=1), "tokenizer": word_tokenizer(CLIP_TOKENS),
                "text_encoder_2": _t5(int(m.transformer.config.joint_attention_dim)), "tokenizer_2": word_tokenizer(512)}
    return FluxPipeline(scheduler=_flow_scheduler("flux"), vae=m.vae, transformer=m.transformer, **text)


def wan_pipeline(text_encoders: bool = False) -> Any:
    from diffusers import WanPipeline

    m = models.build_wan_tiny()
    encoder, tokenizer = (_t5(int(m.transformer.config.text_dim), umt5=True), word_tokenizer(512)) if text_encoders else (None, None)
    return WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=m.vae, scheduler=_flow_scheduler("wan"), transformer=m.transformer)


WORDS = ("a", "cat", "dog", "on", "the", "red", "blue", "mat", "sofa", "sits", "runs", "in", "park")
VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
CLIP_TOKENS = 16
"""The tiny CLIP tokenizers' max length (CLIP's own is 77)."""


def word_tokenizer(max_length: int) -> Any:
    """A word-level tokenizer of `WORDS` that appends </s> (T5's and CLIP's end token here)."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(tok_models.WordLevel(VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", VOCAB["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length)


def _seeded(build: Any, seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _t5(width: int, umt5: bool = False) -> Any:
    """A 1-layer T5 (or UMT5) encoder, `width` wide."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(vocab_size=len(VOCAB), d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
    return _seeded(lambda: model_class(config), 0)


def _clip(width: int, seed: int, projection: bool = False) -> Any:
    """A 1-layer CLIP text encoder, `width` wide (its projection too)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=CLIP_TOKENS, projection_dim=width, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return _seeded(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), seed)


BUILDERS = {
    "dit": dit_pipeline,
    "pixart-sigma": pixart_sigma_pipeline,
    "sd3": sd3_pipeline,
    "flux": flux_pipeline,
    "wan": wan_pipeline,
}


def save_pipeline(family: str, folder: Path, **kwargs: Any) -> Path:
    BUILDERS[family](**kwargs).save_pretrained(str(folder))
    return folder


def run_records(suite: Path, out: Path) -> tuple[dict[str, CaseRecord], Path]:
    """A suite run here: its records by case, and its run directory."""
    from dqar_bench.config.suite import load_suite
    from dqar_bench.measure.records import read_records
    from dqar_bench.runs.runner import run_suite

    run = run_suite(load_suite(suite), out, progress=lambda _: None)
    return {r.case: r for r in read_records(run.path / "records.jsonl")}, run.path


def saved_outputs(run: Path, record: CaseRecord) -> torch.Tensor:
    """A case's scored outputs as the run saved them, every seed in order."""
    from safetensors.torch import load_file

    tensors = load_file(str(run / record.outputs_file))
    return torch.cat([tensors[k] for k in sorted(tensors)])
