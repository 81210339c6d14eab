"""Tiny diffusers pipelines of every family the pipeline path runs, built in code and saved.

Each pipeline holds the transformer (and VAE) of the family's tiny built-in model, so the
same weights run on the lean path (`model: <tiny model>`) and through the pipeline
(`model: {pipeline: <folder>}`). Text encoders: none (`text_encoder=None`); captions reach
both paths as the same precomputed embeddings. `with_text_encoder` adds a tiny UMT5 encoder
with random weights and a word-level tokenizer written in code (Wan), for `prompts:`
through the pipeline's own `encode_prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dqar_bench import families, models


def _flow_scheduler(family: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(families.get(family).scheduler))


def dit_pipeline() -> Any:
    """dit-tiny's config with 1000 classes (DiTPipeline guides with class 1000 as its null label) and a tiny VAE."""
    from diffusers import DDIMScheduler, DiTPipeline

    loaded = models._random_dit("dit-tiny-1000", **{**models.DIT_TINY_CONFIG, "num_embeds_ada_norm": 1000})
    return DiTPipeline(transformer=loaded.transformer, vae=models._tiny_vae(0.18215), scheduler=DDIMScheduler.from_config(families.DDPM_LINEAR))


def pixart_sigma_pipeline() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    m = models.build_pixart_sigma_tiny()
    return PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=m.vae, transformer=m.transformer,
                               scheduler=DPMSolverMultistepScheduler.from_config(families.DDPM_LINEAR))


def sd3_pipeline() -> Any:
    from diffusers import StableDiffusion3Pipeline

    m = models.build_sd3_tiny()
    return StableDiffusion3Pipeline(transformer=m.transformer, scheduler=_flow_scheduler("sd3"), vae=m.vae, text_encoder=None, tokenizer=None,
                                    text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)


def flux_pipeline() -> Any:
    from diffusers import FluxPipeline

    m = models.build_flux_tiny()
    return FluxPipeline(scheduler=_flow_scheduler("flux"), vae=m.vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=m.transformer)


def wan_pipeline(with_text_encoder: bool = False) -> Any:
    from diffusers import WanPipeline

    m = models.build_wan_tiny()
    # the tiny Wan VAE compresses 2x in space: its config says so, as the pipeline reads it (the latents are given, so time needs no factor)
    m.vae.register_to_config(scale_factor_spatial=2)
    encoder, tokenizer = tiny_umt5(int(m.transformer.config.text_dim)) if with_text_encoder else (None, None)
    return WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=m.vae, scheduler=_flow_scheduler("wan"), transformer=m.transformer)


WORDS = ("a", "cat", "dog", "on", "the", "red", "blue", "mat", "sofa", "sits", "runs", "in", "park")


def tiny_umt5(width: int) -> tuple[Any, Any]:
    """A 1-layer UMT5 encoder (random weights, seed 0) and a word-level tokenizer of `WORDS`."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512)
    config = UMT5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = UMT5EncoderModel(config).eval()
    return encoder, tokenizer


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
