"""What a suite's images are conditioned on: class labels, or captions for a text model.

A class-conditioned DiT takes labels (and DiT's reserved null label for guidance). A text
model takes caption embeddings padded to one length; the unconditional branch is the
embedding of the empty prompt. The family entry (`dqar_bench.model.families.Text`) says under
which names the model takes them: the embeddings (width from the config), an attention
mask where the model takes one (PixArt, HunyuanVideo; else padding tokens are zeros, as
the Wan and CogVideoX pipelines pad), a pooled embedding (SD3, FLUX, HunyuanVideo), a fixed
caption length (CogVideoX), and constant inputs (PixArt's `added_cond_kwargs`: no
micro-conditions at 256/512 px, as `PixArtAlphaPipeline` passes them). Three sources,
one per suite key:

- `prompt_lengths` (synthetic captions): caption i is `n_i` tokens of embeddings drawn
  from a fixed seed of (i, n_i) (its pooled embedding from another), the empty prompt one
  token, so a built-in text model runs with no text encoder and `cond_len` (the longest
  caption, which the batch's one decision per block adapts to) is set for real: the
  entropy gate's tau(p) sees it.
- `prompt_embeddings` (a .safetensors file): precomputed `prompt_embeds` [n, L, C],
  `prompt_attention_mask` [n, L] and, for guidance, `negative_prompt_embeds` and
  `negative_prompt_attention_mask` (what a pipeline's `encode_prompt` returns); families
  with a pooled embedding also need `pooled_prompt_embeds` and `negative_pooled_prompt_embeds`.
  The file may say which prompts it was encoded from: metadata key `prompts`, a JSON list
  of strings, one per caption (`save_file(tensors, path, metadata={"prompts": json.dumps(prompts)})`);
  CLIP score needs them.
- `prompts` (strings): encoded once by the checkpoint's own `text_encoder`/`tokenizer`
  (T5-XXL, for the PixArt families; needs `transformers` and the checkpoint's text encoder
  on disk), then freed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.core.weights import weights_only_loads
from dqar_bench.model.families import Text
from dqar_bench.model.families import get as get_family
from dqar_bench.model.sampling import Condition

MAX_CAPTION_TOKENS = 120  # PixArt-alpha's max_sequence_length: what `prompts` are tokenized to
EMBEDDING_KEYS = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
POOLED_KEYS = ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
PROMPTS_METADATA = "prompts"
PIXART_TEXT = get_family("pixart").text


def captions_condition(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    null_embeds: torch.Tensor,
    null_mask: torch.Tensor,
    text: Text | None = None,
    pooled: torch.Tensor | None = None,
    null_pooled: torch.Tensor | None = None,
    length: int | None = None,
) -> Condition:
    """Caption embeddings [n, L, C] and masks [n, L] as `text` names them; the null caption is broadcast to n.

    `length` pads (or cuts) every caption to that many tokens; without a mask input the
    padding is zeros. `pooled` [n, P] is the pooled embedding where the family takes one.
    """
    text = text or PIXART_TEXT
    assert text is not None
    batch = embeds.shape[0]
    cond_len = int(mask.sum(dim=1).max().item())
    if length is not None:
        embeds, mask = _pad(embeds, mask, length)
    null_embeds, null_mask = _pad(null_embeds, null_mask, embeds.shape[1])
    if null_embeds.shape[0] == 1:
        null_embeds, null_mask = null_embeds.expand(batch, -1, -1).contiguous(), null_mask.expand(batch, -1).contiguous()
    inputs: dict[str, Any] = {text.embeds: embeds}
    null: dict[str, Any] = {text.embeds: null_embeds}
    if text.mask is not None:
        inputs[text.mask], null[text.mask] = mask, null_mask
    else:
        inputs[text.embeds], null[text.embeds] = embeds * mask[..., None].to(embeds.dtype), null_embeds * null_mask[..., None].to(embeds.dtype)
    if text.pooled is not None:
        if pooled is None or null_pooled is None:
            raise ModelError(f"this model takes pooled caption embeddings ('{text.pooled}'); give them with the captions")
        inputs[text.pooled] = pooled
        null[text.pooled] = null_pooled.expand(batch, -1).contiguous() if null_pooled.shape[0] == 1 else null_pooled
    for key, value in text.extra.items():
        inputs[key], null[key] = _copy(value), _copy(value)
    return Condition(batch, inputs, null, cond_len=cond_len)


def synthetic_captions(
    lengths: list[int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    text: Text | None = None,
    pooled_channels: int | None = None,
    length: int | None = None,
) -> Condition:
    """Captions of `lengths` tokens each, embeddings drawn from fixed seeds (no text encoder)."""
    longest = max(lengths)
    embeds = torch.zeros(len(lengths), longest, channels)
    mask = torch.zeros(len(lengths), longest)
    for i, n in enumerate(lengths):
        generator = torch.Generator().manual_seed(1_000_003 * (i + 1) + n)
        embeds[i, :n] = torch.randn(n, channels, generator=generator)
        mask[i, :n] = 1
    null = torch.randn(1, 1, channels, generator=torch.Generator().manual_seed(7))
    pooled = null_pooled = None
    if pooled_channels:
        pooled = torch.stack([torch.randn(pooled_channels, generator=torch.Generator().manual_seed(2_000_003 * (i + 1) + n)) for i, n in enumerate(lengths)])
        null_pooled = torch.randn(1, pooled_channels, generator=torch.Generator().manual_seed(11))
        pooled, null_pooled = pooled.to(device, dtype), null_pooled.to(device, dtype)
    return captions_condition(
        embeds.to(device, dtype), mask.to(device), null.to(device, dtype), torch.ones(1, 1, device=device),
        text, pooled, null_pooled, length,
    )


def embeddings_condition(path: str | Path, device: torch.device, dtype: torch.dtype, text: Text | None = None, length: int | None = None) -> Condition:
    """Captions precomputed into a .safetensors file (see the module docstring for its keys)."""
    from safetensors.torch import load_file

    text = text or PIXART_TEXT
    assert text is not None
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"prompt embeddings file '{path}' cannot be read: {exc}") from None
    wanted = EMBEDDING_KEYS + (POOLED_KEYS if text.pooled else ())
    missing = [k for k in wanted if k not in tensors]
    if missing:
        raise ModelError(f"prompt embeddings file '{path}' lacks {', '.join(missing)} (keys: {', '.join(wanted)})")
    get = lambda k: tensors[k].to(device)  # noqa: E731
    pooled = (get(POOLED_KEYS[0]).to(dtype), get(POOLED_KEYS[1]).to(dtype)) if text.pooled else (None, None)
    return captions_condition(
        get("prompt_embeds").to(dtype), get("prompt_attention_mask"), get("negative_prompt_embeds").to(dtype),
        get("negative_prompt_attention_mask"), text, *pooled, length,
    )


def save_embeddings(condition: Condition, text: Text, path: str | Path) -> None:
    """A text `Condition` (say, prompts encoded once by a pipeline's `encode_prompt`, see
    `dqar_bench.model.pipelines.encode_prompts`) as a `prompt_embeddings` file, for offline runs."""
    from safetensors.torch import save_file

    embeds, null = condition.inputs[text.embeds], condition.null_inputs[text.embeds]
    ones = lambda t: torch.ones(t.shape[:2])  # noqa: E731  (no mask input: the padding is in the embeddings)
    tensors = {
        "prompt_embeds": embeds, "negative_prompt_embeds": null,
        "prompt_attention_mask": condition.inputs[text.mask] if text.mask else ones(embeds),
        "negative_prompt_attention_mask": condition.null_inputs[text.mask] if text.mask else ones(null),
    }
    if text.pooled:
        tensors.update(pooled_prompt_embeds=condition.inputs[text.pooled], negative_pooled_prompt_embeds=condition.null_inputs[text.pooled])
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def embeddings_batch(path: str | Path) -> int:
    """How many captions a prompt embeddings file holds, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if "prompt_embeds" not in handle.keys():
            raise ValueError(f"it has no 'prompt_embeds' (keys: {', '.join(EMBEDDING_KEYS)})")
        return int(handle.get_slice("prompt_embeds").get_shape()[0])


def embeddings_prompts(path: str | Path) -> list[str] | None:
    """The prompts a prompt embeddings file says it holds (metadata `prompts`), read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(PROMPTS_METADATA)
    if raw is None:
        return None
    try:
        prompts = json.loads(raw)
    except ValueError:
        prompts = None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"its metadata '{PROMPTS_METADATA}' must be a JSON list of strings, one per caption")
    return prompts


def t5_condition(
    source: str, prompts: list[str], device: torch.device, dtype: torch.dtype, offline: bool, text: Text | None = None, length: int | None = None
) -> Condition:
    """Prompts encoded by the checkpoint's T5 text encoder, as `PixArtAlphaPipeline` does."""
    try:
        from transformers import T5EncoderModel, T5Tokenizer
    except ImportError:
        raise ModelError(
            "captions as 'prompts' need the `transformers` package and the checkpoint's text_encoder; "
            "pip install 'dqar-bench[text]', or give 'prompt_embeddings' (a .safetensors file) instead"
        ) from None
    try:
        tokenizer = T5Tokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=offline)
        with weights_only_loads():  # a checkpoint's .bin pickles are read as data, never run
            encoder = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", local_files_only=offline, torch_dtype=dtype)
    except Exception as exc:
        raise ModelError(
            f"'{source}' has no loadable text_encoder/tokenizer ({type(exc).__name__}); download the whole checkpoint "
            f"(`hf download {source}`) or give 'prompt_embeddings' instead"
        ) from None
    encoder.to(device).eval()
    max_tokens = text.max_tokens if text is not None else MAX_CAPTION_TOKENS

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenizer(texts, padding="max_length", max_length=max_tokens, truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        with torch.no_grad():
            embeds = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return embeds.to(dtype), mask

    embeds, mask = encode(prompts)
    null_embeds, null_mask = encode([""])  # the encoder is dropped with this frame
    return captions_condition(embeds, mask, null_embeds, null_mask, text, length=length)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


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
