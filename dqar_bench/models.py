"""Models the harness can run: built-in ones made in code, and diffusers DiT checkpoints.

Built-in models need no download: `dit-tiny` is a few-block DiT with random weights from a
fixed seed (8x8 latents), for fast tests and smoke runs; `pixart-tiny` is its
text-conditioned sibling (PixArt-alpha's architecture: self-attention, cross-attention
over caption embeddings, `ada_norm_single`), driven by synthetic caption embeddings so no
text encoder is needed. Anything else is taken as a diffusers checkpoint id or local
folder and loaded with `from_pretrained`, offline unless the suite allows a download: a
`PixArtTransformer2DModel` for PixArt checkpoints, a `DiTTransformer2DModel` otherwise.

A model's `family` ("dit": class labels; "pixart": captions) picks its adapter and its
conditioning; `model_family` knows it before any weight is loaded, for `validate`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.errors import ModelError
from dqar_bench.weights import weights_only_loads

# DiT's noise schedule (the one DiTPipeline ships with): 1000 steps, linear betas.
DIT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
}


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

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def sample_size(self) -> int:
        return int(self.transformer.config.sample_size)

    @property
    def null_class(self) -> int:
        """The label index DiT's label embedding reserves for the unconditional branch."""
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def caption_channels(self) -> int | None:
        """Width of the caption embeddings a text-conditioned model takes (4096 for T5-XXL)."""
        value = getattr(self.transformer.config, "caption_channels", None)
        return int(value) if value is not None else None


def _random_dit(name: str, **config: Any) -> LoadedModel:
    """A class-conditional DiT (learned sigma, patch 2) with random weights from seed 0."""
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, **config)
    return LoadedModel(name, model.eval())


DIT_TINY_CONFIG: dict[str, Any] = {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 4, "sample_size": 8, "num_embeds_ada_norm": 10}
DIT_XL_CONFIG: dict[str, Any] = {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28, "sample_size": 32, "num_embeds_ada_norm": 1000}


def build_dit_tiny() -> LoadedModel:
    """A 4-block DiT (2 heads x 16, 8x8x4 latents, 10 classes), random weights from seed 0."""
    return _random_dit("dit-tiny", **DIT_TINY_CONFIG)


def build_dit_xl_random() -> LoadedModel:
    """DiT-XL/2-256's architecture (28 blocks, 16 heads x 72, 32x32x4 latents, 1000 classes) with
    random weights from seed 0: for timing on a machine without the checkpoint (ANCHORS.md
    section 1 was measured so). Its images and quality figures mean nothing."""
    return _random_dit("dit-xl-2-256-random", **DIT_XL_CONFIG)


def build_pixart_tiny() -> LoadedModel:
    """A 4-block PixArt-alpha (2 heads x 16, 8x8x4 latents, 64-wide captions), random weights from seed 0."""
    from diffusers import PixArtTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            cross_attention_dim=32,
            sample_size=8,
            patch_size=2,
            caption_channels=64,
        )
    return LoadedModel("pixart-tiny", model.eval(), family="pixart")


def build_digits_dit() -> LoadedModel:
    """The project's trained reference model: a 6-block pixel-space DiT on sklearn's digits.

    Its weights ship with the package (`dqar_bench/reference/weights/`, see MODEL_CARD.md),
    so quality changes on a CPU are real changes, not noise around random weights.
    """
    from dqar_bench.reference.load import load_reference_dit, load_reference_scheduler_config

    return LoadedModel("digits-dit", load_reference_dit(), load_reference_scheduler_config())


BUILTIN_MODELS: dict[str, Callable[[], LoadedModel]] = {
    "dit-tiny": build_dit_tiny,
    "digits-dit": build_digits_dit,
    "pixart-tiny": build_pixart_tiny,
    "dit-xl-2-256-random": build_dit_xl_random,
}
BUILTIN_FAMILIES: dict[str, str] = {"dit-tiny": "dit", "digits-dit": "dit", "pixart-tiny": "pixart", "dit-xl-2-256-random": "dit"}
FAMILY_OF_CLASS = {"DiTTransformer2DModel": "dit", "PixArtTransformer2DModel": "pixart"}


def _digits_config() -> dict[str, Any]:
    from dqar_bench.reference.load import load_reference_dit_config, reference_weights_present

    reference_weights_present()
    return load_reference_dit_config()


BUILTIN_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "dit-tiny": lambda: DIT_TINY_CONFIG,
    "dit-xl-2-256-random": lambda: DIT_XL_CONFIG,
    "digits-dit": _digits_config,
}
"""A built-in model's transformer config, read without building it (for `validate`)."""

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_config(name: str, allow_download: bool = False) -> dict[str, Any] | None:
    """The transformer config of a model, without building it or loading weights.

    Raises `ModelError` (one line) where the model cannot be had: an unknown name, a missing
    folder, a built-in whose shipped files are gone. None where the config cannot be read
    here but the run may still get it (a checkpoint id not downloaded yet, see
    `offline_problem`), or for a built-in with no config to read.
    """
    if name in BUILTIN_MODELS:
        config = BUILTIN_CONFIGS.get(name)
        return config() if config is not None else None
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "transformer" / "config.json").is_file():
            raise ModelError(f"model folder '{name}' has no transformer/config.json; give a diffusers checkpoint folder (or id)")
        return _local_transformer_config(name)
    if not HUB_ID.match(name):
        if "/" in name or name.startswith((".", "~")):
            raise ModelError(f"model folder '{name}' does not exist; give an existing diffusers checkpoint folder, a checkpoint id or a built-in model")
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(f"model '{name}' is neither a built-in model ({known}) nor a checkpoint id or folder")
    return _local_transformer_config(name)


def offline_problem(name: str, allow_download: bool) -> str | None:
    """Why a checkpoint id cannot be loaded on this machine as the suite stands (it is not
    in the local Hugging Face cache and downloads are off), or None."""
    if allow_download or name in BUILTIN_MODELS or Path(name).expanduser().exists() or not HUB_ID.match(name):
        return None
    if _local_transformer_config(name) is not None:
        return None
    return (
        f"model '{name}' is not available offline; download it first (`huggingface-cli download {name}`) "
        f"or set `model: {{name: {name}, download: true}}` in the suite"
    )


def num_classes(config: dict[str, Any] | None) -> int | None:
    """Class labels a class-conditional DiT knows (0..n-1) by its config; None if it does not say."""
    value = (config or {}).get("num_embeds_ada_norm")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def model_family(name: str) -> str | None:
    """"dit" or "pixart" without loading weights: built-in, the checkpoint's config if it is
    on disk (a folder or the hub cache), else a guess from the name; None if unknown."""
    if name in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[name]
    config = _local_transformer_config(name)
    if config is not None:
        return FAMILY_OF_CLASS.get(str(config.get("_class_name")))
    lowered = name.lower()
    if "pixart" in lowered:
        return "pixart"
    if "dit" in lowered:
        return "dit"
    return None


def _local_transformer_config(name: str) -> dict[str, Any] | None:
    path = Path(name).expanduser() / "transformer" / "config.json"
    try:
        if not path.exists():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, "transformer/config.json", local_files_only=True))
        return json.loads(path.read_text())
    except Exception:
        return None


def load_model(name: str, device: torch.device, dtype: torch.dtype, allow_download: bool = False) -> LoadedModel:
    """Build a built-in model or load a diffusers DiT checkpoint, on `device` in `dtype`."""
    if name in BUILTIN_MODELS:
        loaded = BUILTIN_MODELS[name]()
    else:
        loaded = _load_checkpoint(name, allow_download)
    loaded.transformer.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if loaded.vae is not None:
        loaded.vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return loaded


def _load_checkpoint(name: str, allow_download: bool) -> LoadedModel:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    family = model_family(name) or "dit"
    model_class = PixArtTransformer2DModel if family == "pixart" else DiTTransformer2DModel
    model_config(name, allow_download)  # an unknown name or a missing folder: its one-line error
    local = Path(name).expanduser()
    is_local = local.exists()
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE") == "1"
    source = str(local) if is_local else name
    try:
        with weights_only_loads():  # a checkpoint's .bin pickles are read as data, never run
            transformer = model_class.from_pretrained(source, subfolder="transformer", local_files_only=offline)
    except (OSError, ValueError, EnvironmentError) as exc:
        if is_local:
            raise ModelError(f"model folder '{name}' has no loadable {model_class.__name__} in 'transformer/': {_first_line(exc)}") from None
        raise ModelError(
            f"model '{name}' is not available offline; download it first "
            f"(`huggingface-cli download {name}`) or set `model: {{name: {name}, download: true}}` in the suite"
        ) from None
    return LoadedModel(name, transformer, _scheduler_config(source, offline), _load_vae(source, offline), family, source)


def _scheduler_config(source: str, offline: bool) -> dict[str, Any]:
    try:
        from huggingface_hub import hf_hub_download

        path = Path(source) / "scheduler" / "scheduler_config.json"
        if not path.exists():
            path = Path(hf_hub_download(source, "scheduler/scheduler_config.json", local_files_only=offline))
        config = json.loads(path.read_text())
        return {k: v for k, v in config.items() if not k.startswith("_")}
    except Exception:
        return dict(DIT_SCHEDULER_CONFIG)


def _load_vae(source: str, offline: bool) -> torch.nn.Module | None:
    try:
        from diffusers import AutoencoderKL

        with weights_only_loads():
            return AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=offline)
    except Exception:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
