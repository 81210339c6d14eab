"""A loaded model: the transformer and what the sampler needs to drive it, whatever loaded it.

Its own module so that the loaders (`models` for built-in models and checkpoints,
`pipelines` for a checkpoint's own pipeline) both build it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.model import families
from dqar_bench.model.families import Family
from dqar_bench.model.sampling import latents_shape, num_blocks

DIT_SCHEDULER_CONFIG: dict[str, Any] = dict(families.DDPM_LINEAR)
"""DiT's noise schedule (the one DiTPipeline ships with): 1000 steps, linear betas."""


@dataclass
class LoadedModel:
    """A transformer and what the sampler needs to drive it."""

    name: str
    transformer: torch.nn.Module
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(DIT_SCHEDULER_CONFIG))
    vae: torch.nn.Module | None = None
    family: str = "dit"
    source: str = ""
    """Where a checkpoint was loaded from (its text encoder lives there too); "" when built in code."""
    pipeline: Any = None
    """The model's own diffusers pipeline when it runs through it (`dqar_bench.model.pipelines`): its
    calls return decoded images, not latents."""

    @property
    def spec(self) -> Family:
        """The family entry."""
        return families.get(self.family)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Per-image latents the sampler draws and returns: (channels, h, w) or (channels, frames, h, w)."""
        return latents_shape(self.transformer)

    @property
    def latent_channels(self) -> int:
        return self.latent_shape[0]

    @property
    def sample_size(self) -> int:
        return int(self.latent_shape[-1])

    @property
    def null_class(self) -> int:
        """The label index DiT's label embedding reserves for the unconditional branch (also its
        class count). A text-conditioned model has no label embedding: 1, so code that draws
        labels for any model (FID images) draws one dummy label, which its call ignores."""
        if self.spec.text is not None:
            return 1
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.transformer)

    @property
    def caption_channels(self) -> int | None:
        """Width of the caption embeddings a text-conditioned model takes (4096 for T5-XXL)."""
        return self.text_width

    @property
    def text_width(self) -> int | None:
        text = self.spec.text
        return config_int(self.transformer, text.width) if text is not None else None

    @property
    def pooled_width(self) -> int | None:
        text = self.spec.text
        return config_int(self.transformer, text.pooled_width) if text is not None and text.pooled_width else None

    @property
    def text_length(self) -> int | None:
        """The fixed number of caption tokens the model takes (CogVideoX), or None."""
        text = self.spec.text
        if text is None or text.length is None:
            return None
        return text.length if isinstance(text.length, int) else config_int(self.transformer, text.length)


def config_int(transformer: torch.nn.Module, key: str) -> int | None:
    value = getattr(transformer.config, key, None)
    return int(value) if value is not None else None


def local_json(name: str, file: str) -> dict[str, Any] | None:
    """`file` of checkpoint `name` from a folder or the local Hugging Face cache; None where it is
    not on disk (nothing is downloaded), a one-line `ModelError` where it is but is not a JSON
    object (never taken for missing)."""
    path = Path(name).expanduser() / file
    try:
        if not path.exists():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, file, local_files_only=True))
    except Exception:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not valid JSON ({first_line(exc)}); fix it or download the checkpoint again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds {type(data).__name__}, not a JSON object; fix it or download the checkpoint again")
    return data


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
