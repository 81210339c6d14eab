"""What a suite's images are conditioned on: class labels, or captions for a text DiT.

A class-conditioned DiT takes labels (and DiT's reserved null label for guidance). A
PixArt model takes caption embeddings from a T5 encoder, padded to one length with an
attention mask; the unconditional branch is the embedding of the empty prompt. Three
sources, one per suite key:

- `prompt_lengths` (synthetic captions): caption i is `n_i` tokens of embeddings drawn
  from a fixed seed of (i, n_i), the empty prompt one token, so a built-in text model runs
  with no text encoder and `cond_len` (the longest caption, which the batch's one
  decision per block adapts to) is set for real: the entropy gate's tau(p) sees it.
- `prompt_embeddings` (a .safetensors file): precomputed `prompt_embeds` [n, L, C],
  `prompt_attention_mask` [n, L] and, for guidance, `negative_prompt_embeds` and
  `negative_prompt_attention_mask` (what `PixArtAlphaPipeline.encode_prompt` returns).
- `prompts` (strings): encoded once by the checkpoint's own `text_encoder`/`tokenizer`
  (T5-XXL; needs `transformers` and the checkpoint's text encoder on disk), then freed.

PixArt at 256/512 px has no micro-conditions: `added_cond_kwargs` carries
`resolution: None, aspect_ratio: None`, as `PixArtAlphaPipeline` passes for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dqar_bench.errors import ModelError
from dqar_bench.sampling import Condition, labels_condition
from dqar_bench.weights import weights_only_loads

MAX_CAPTION_TOKENS = 120  # PixArt-alpha's max_sequence_length
EMBEDDING_KEYS = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")


def captions_condition(embeds: torch.Tensor, mask: torch.Tensor, null_embeds: torch.Tensor, null_mask: torch.Tensor) -> Condition:
    """Caption embeddings [n, L, C] and masks [n, L]; the null caption is broadcast to n."""
    batch = embeds.shape[0]
    null_embeds, null_mask = _pad(null_embeds, null_mask, embeds.shape[1])
    if null_embeds.shape[0] == 1:
        null_embeds, null_mask = null_embeds.expand(batch, -1, -1).contiguous(), null_mask.expand(batch, -1).contiguous()
    micro = {"resolution": None, "aspect_ratio": None}
    cond_len = int(mask.sum(dim=1).max().item())
    return Condition(
        batch,
        {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "added_cond_kwargs": micro},
        {"encoder_hidden_states": null_embeds, "encoder_attention_mask": null_mask, "added_cond_kwargs": dict(micro)},
        cond_len=cond_len,
    )


def synthetic_captions(lengths: list[int], channels: int, device: torch.device, dtype: torch.dtype) -> Condition:
    """Captions of `lengths` tokens each, embeddings drawn from fixed seeds (no text encoder)."""
    longest = max(lengths)
    embeds = torch.zeros(len(lengths), longest, channels)
    mask = torch.zeros(len(lengths), longest)
    for i, n in enumerate(lengths):
        generator = torch.Generator().manual_seed(1_000_003 * (i + 1) + n)
        embeds[i, :n] = torch.randn(n, channels, generator=generator)
        mask[i, :n] = 1
    null = torch.randn(1, 1, channels, generator=torch.Generator().manual_seed(7))
    return captions_condition(
        embeds.to(device, dtype), mask.to(device), null.to(device, dtype), torch.ones(1, 1, device=device)
    )


def embeddings_condition(path: str | Path, device: torch.device, dtype: torch.dtype) -> Condition:
    """Captions precomputed into a .safetensors file (see the module docstring for its keys)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"prompt embeddings file '{path}' cannot be read: {exc}") from None
    missing = [k for k in EMBEDDING_KEYS if k not in tensors]
    if missing:
        raise ModelError(f"prompt embeddings file '{path}' lacks {', '.join(missing)} (keys: {', '.join(EMBEDDING_KEYS)})")
    get = lambda k: tensors[k].to(device)  # noqa: E731
    return captions_condition(
        get("prompt_embeds").to(dtype), get("prompt_attention_mask"), get("negative_prompt_embeds").to(dtype), get("negative_prompt_attention_mask")
    )


def embeddings_batch(path: str | Path) -> int:
    """How many captions a prompt embeddings file holds, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if "prompt_embeds" not in handle.keys():
            raise ValueError(f"it has no 'prompt_embeds' (keys: {', '.join(EMBEDDING_KEYS)})")
        return int(handle.get_slice("prompt_embeds").get_shape()[0])


def t5_condition(source: str, prompts: list[str], device: torch.device, dtype: torch.dtype, offline: bool) -> Condition:
    """Prompts encoded by the checkpoint's T5 text encoder, as `PixArtAlphaPipeline` does."""
    try:
        from transformers import T5EncoderModel, T5Tokenizer
    except ImportError:
        raise ModelError(
            "captions as 'prompts' need the `transformers` package and the checkpoint's text_encoder; "
            "install transformers, or give 'prompt_embeddings' (a .safetensors file) instead"
        ) from None
    try:
        tokenizer = T5Tokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=offline)
        with weights_only_loads():  # a checkpoint's .bin pickles are read as data, never run
            encoder = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", local_files_only=offline, torch_dtype=dtype)
    except Exception as exc:
        raise ModelError(
            f"'{source}' has no loadable text_encoder/tokenizer ({type(exc).__name__}); download the whole checkpoint "
            f"(`huggingface-cli download {source}`) or give 'prompt_embeddings' instead"
        ) from None
    encoder.to(device).eval()

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenizer(texts, padding="max_length", max_length=MAX_CAPTION_TOKENS, truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        with torch.no_grad():
            embeds = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return embeds.to(dtype), mask

    embeds, mask = encode(prompts)
    null_embeds, null_mask = encode([""])  # the encoder is dropped with this frame
    return captions_condition(embeds, mask, null_embeds, null_mask)


def condition_for(suite: Any, model: Any, device: torch.device, dtype: torch.dtype) -> Condition:
    """The suite's conditioning for `model` (`dqar_bench.suite.Suite`, `models.LoadedModel`)."""
    if model.family != "pixart":
        return labels_condition(suite.class_labels, model.null_class, device)
    if suite.prompt_embeddings:
        return embeddings_condition(suite.prompt_embeddings, device, dtype)
    if suite.prompts:
        return t5_condition(model.source or model.name, suite.prompts, device, dtype, not suite.allow_download)
    if suite.prompt_lengths:
        return synthetic_captions(suite.prompt_lengths, model.caption_channels or 4096, device, dtype)
    raise ModelError(f"model '{model.name}' is text-conditioned: give 'prompt_lengths', 'prompts' or 'prompt_embeddings' in the suite")


def _pad(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (or cut) captions to `length` tokens; padding is masked out."""
    have = embeds.shape[1]
    if have >= length:
        return embeds[:, :length], mask[:, :length]
    pad = length - have
    return (
        torch.cat([embeds, embeds.new_zeros(embeds.shape[0], pad, embeds.shape[2])], dim=1),
        torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1),
    )
