"""Models the harness can run: built-in ones made in code, and diffusers checkpoints.

Built-in models need no download. Every family (`dqar_bench.model.families`) has a tiny one
(`TINY_MODELS`): a few blocks of the real diffusers transformer class with random weights
from a fixed seed, a tiny VAE of the family's own class where its pipeline has one, and
synthetic caption embeddings instead of a text encoder (`dqar_bench.model.conditioning`), so
every part can be tested on every family on a CPU in seconds. `digits-dit` is the
project's trained reference model; `dit-xl-2-256-random` is DiT-XL/2's architecture for
speed figures. Anything else is taken as a diffusers checkpoint id or local folder: its
family comes from the pipeline class in `model_index.json` (or the transformer's class),
and its transformer, VAE and scheduler config are loaded with `from_pretrained`, offline
unless the suite allows a download.

`model_family` knows a model's family before any weight is loaded, for `validate`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.core.weights import weights_only_loads
from dqar_bench.model import families
from dqar_bench.model.families import Family
from dqar_bench.model.loaded import LoadedModel, first_line, local_json
from dqar_bench.model.pipelines import load_pipeline


def _seeded(build: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    """`build()` with the global RNG seeded and restored: random weights from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _random_dit(name: str, **config: Any) -> LoadedModel:
    """A class-conditional DiT (learned sigma, patch 2) with random weights from seed 0."""
    from diffusers import DiTTransformer2DModel

    return LoadedModel(name, _seeded(lambda: DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, **config)))


DIT_TINY_CONFIG: dict[str, Any] = {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 4, "sample_size": 8, "num_embeds_ada_norm": 10}
DIT_XL_CONFIG: dict[str, Any] = {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28, "sample_size": 32, "num_embeds_ada_norm": 1000}


def build_dit_tiny() -> LoadedModel:
    """A 4-block DiT (2 heads x 16, 8x8x4 latents, 10 classes), random weights from seed 0."""
    return _random_dit("dit-tiny", **DIT_TINY_CONFIG)


def build_dit_xl_random() -> LoadedModel:
    """DiT-XL/2-256's architecture (28 blocks, 16 heads x 72, 32x32x4 latents, 1000 classes) with
    random weights from seed 0: for timing on a machine without the checkpoint (the H200
    figures of docs/measurement.md were measured so). Its images and quality figures mean nothing."""
    return _random_dit("dit-xl-2-256-random", **DIT_XL_CONFIG)


def _tiny_pixart(**config: Any) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    return _seeded(lambda: PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=64, **config,
    ))


def build_pixart_tiny() -> LoadedModel:
    """A 4-block PixArt-alpha (2 heads x 16, 8x8x4 latents, 64-wide captions), random weights from seed 0."""
    return LoadedModel("pixart-tiny", _tiny_pixart(), family="pixart")


def build_pixart_sigma_tiny() -> LoadedModel:
    """A 4-block PixArt-Sigma (PixArt's blocks, Sigma's position-embedding scale, no micro-conditions) and a tiny VAE."""
    transformer = _tiny_pixart(interpolation_scale=0.5, use_additional_conditions=False)
    return LoadedModel("pixart-sigma-tiny", transformer, vae=_tiny_vae(0.13025), family="pixart-sigma")


def build_sd3_tiny() -> LoadedModel:
    """A 3-block SD3 MMDiT (2 heads x 8, 8x8x4 latents, 32-wide captions, 16-wide pooled), flow matching, tiny VAE."""
    from diffusers import SD3Transformer2DModel

    transformer = _seeded(lambda: SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8,
    ))
    return LoadedModel("sd3-tiny", transformer, dict(families.get("sd3").scheduler), _tiny_vae(1.5305, 0.0609), "sd3")


def build_flux_tiny() -> LoadedModel:
    """A FLUX.1-dev-like model: 2 dual- and 2 single-stream blocks (2 heads x 8), 8x8x4 latents
    packed into 16 tokens, guidance embedding, dynamic shifting, tiny VAE."""
    from diffusers import FluxTransformer2DModel

    transformer = _seeded(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ))
    transformer.register_to_config(sample_size=8)
    return LoadedModel("flux-tiny", transformer, dict(families.get("flux").scheduler), _tiny_vae(0.3611, 0.1159), "flux")


def build_wan_tiny() -> LoadedModel:
    """A 2-block Wan 2.1 (2 heads x 8, 3 latent frames of 8x8x4, 32-wide captions), flow matching, tiny Wan VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    transformer = _seeded(lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=32,
        freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ))
    transformer.register_to_config(sample_size=8, sample_frames=3)
    vae = _seeded(lambda: AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.1, 0.2, -0.2], latents_std=[1.5, 1.2, 0.9, 1.1],
    ), seed=1)
    # it compresses 2x in space: its config says so, as WanPipeline (and `resolution`) read it; time keeps
    # Wan's declared 4, so frame counts follow the real model's rule (the tiny VAE itself keeps every frame)
    vae.register_to_config(scale_factor_spatial=2)
    return LoadedModel("wan-tiny", transformer, dict(families.get("wan").scheduler), vae, "wan")


def build_cogvideox_tiny() -> LoadedModel:
    """A 2-block CogVideoX-5b-like model (2 heads x 16, 3D RoPE, 3 latent frames of 8x8x4, 8 caption tokens),
    v-prediction, tiny CogVideoX VAE."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    transformer = _seeded(lambda: CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16, text_embed_dim=32,
        num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=8, use_rotary_positional_embeddings=True,
    ))
    vae = _seeded(lambda: AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2, block_out_channels=(8, 8),
        latent_channels=4, layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=2, sample_height=16, sample_width=16,
        scaling_factor=1.15258426,
    ), seed=1)
    return LoadedModel("cogvideox-tiny", transformer, dict(families.get("cogvideox").scheduler), vae, "cogvideox")


def build_hunyuan_video_tiny() -> LoadedModel:
    """A HunyuanVideo with 1 dual- and 1 single-stream block (2 heads x 8), 3 latent frames of 8x8x4,
    guidance embedding, flow matching (shift 7), tiny HunyuanVideo VAE."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    transformer = _seeded(lambda: HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
        text_embed_dim=32, pooled_projection_dim=16, rope_theta=256.0, rope_axes_dim=(2, 2, 4),
    ))
    transformer.register_to_config(sample_size=8, sample_frames=3)
    vae = _seeded(lambda: AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=4, temporal_compression_ratio=4,
    ), seed=1)
    return LoadedModel("hunyuan-video-tiny", transformer, dict(families.get("hunyuan-video").scheduler), vae, "hunyuan-video")


def build_sana_tiny() -> LoadedModel:
    """A 2-block Sana (linear self-attention, 2 heads x 8, 8x8x4 latents, 32-wide captions), flow matching, tiny VAE."""
    from diffusers import SanaTransformer2DModel

    transformer = _seeded(lambda: SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_cross_attention_heads=2,
        cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32, sample_size=8, patch_size=1,
    ))
    return LoadedModel("sana-tiny", transformer, dict(families.get("sana").scheduler), _tiny_vae(0.41407), "sana")


def _tiny_vae(scaling_factor: float, shift_factor: float | None = None) -> torch.nn.Module:
    """A one-level AutoencoderKL (4 latent channels, 8 wide): 8x8 latents decode to 16x16 RGB."""
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    ), seed=1)


def build_digits_dit() -> LoadedModel:
    """The project's trained reference model: a 6-block pixel-space DiT on sklearn's digits.

    Its weights ship with the package (`dqar_bench/model/reference/weights/`, see MODEL_CARD.md),
    so quality changes on a CPU are real changes, not noise around random weights.
    """
    from dqar_bench.model.reference.load import load_reference_dit, load_reference_scheduler_config

    return LoadedModel("digits-dit", load_reference_dit(), load_reference_scheduler_config())


def build_digits_flow() -> LoadedModel:
    """digits-dit's architecture trained with the rectified-flow objective: the trained
    flow-matching reference (velocity prediction, `FlowMatchEulerDiscreteScheduler`, shift 2),
    so flow-matching quality means something on a CPU (MODEL_CARD.md in its weights folder)."""
    from dqar_bench.model.reference.load import load_flow_reference_dit, load_flow_reference_scheduler_config

    return LoadedModel("digits-flow", load_flow_reference_dit(), load_flow_reference_scheduler_config())


BUILTIN_MODELS: dict[str, Callable[[], LoadedModel]] = {
    "dit-tiny": build_dit_tiny,
    "digits-dit": build_digits_dit,
    "digits-flow": build_digits_flow,
    "pixart-tiny": build_pixart_tiny,
    "pixart-sigma-tiny": build_pixart_sigma_tiny,
    "sd3-tiny": build_sd3_tiny,
    "flux-tiny": build_flux_tiny,
    "wan-tiny": build_wan_tiny,
    "cogvideox-tiny": build_cogvideox_tiny,
    "hunyuan-video-tiny": build_hunyuan_video_tiny,
    "sana-tiny": build_sana_tiny,
    "dit-xl-2-256-random": build_dit_xl_random,
}
BUILTIN_FAMILIES: dict[str, str] = {
    "dit-tiny": "dit",
    "digits-dit": "dit",
    "digits-flow": "dit",
    "pixart-tiny": "pixart",
    "pixart-sigma-tiny": "pixart-sigma",
    "sd3-tiny": "sd3",
    "flux-tiny": "flux",
    "wan-tiny": "wan",
    "cogvideox-tiny": "cogvideox",
    "hunyuan-video-tiny": "hunyuan-video",
    "sana-tiny": "sana",
    "dit-xl-2-256-random": "dit",
}
TINY_MODELS: dict[str, str] = {
    "dit": "dit-tiny",
    "pixart": "pixart-tiny",
    "pixart-sigma": "pixart-sigma-tiny",
    "sd3": "sd3-tiny",
    "flux": "flux-tiny",
    "wan": "wan-tiny",
    "cogvideox": "cogvideox-tiny",
    "hunyuan-video": "hunyuan-video-tiny",
    "sana": "sana-tiny",
}
"""The tiny built-in model of every family: what tests run every part on."""


def _digits_flow_config() -> dict[str, Any]:
    from dqar_bench.model.reference.load import load_flow_reference_dit_config

    return load_flow_reference_dit_config()


def _digits_config() -> dict[str, Any]:
    from dqar_bench.model.reference.load import load_reference_dit_config, reference_weights_present

    reference_weights_present()
    return load_reference_dit_config()


BUILTIN_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "dit-tiny": lambda: DIT_TINY_CONFIG,
    "dit-xl-2-256-random": lambda: DIT_XL_CONFIG,
    "digits-dit": _digits_config,
    "digits-flow": _digits_flow_config,
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


def offline_problem(name: str, allow_download: bool, pipeline: bool = False) -> str | None:
    """Why a checkpoint id cannot be loaded on this machine as the suite stands (it is not
    in the local Hugging Face cache and downloads are off), or None."""
    if allow_download or name in BUILTIN_MODELS or Path(name).expanduser().exists() or not HUB_ID.match(name):
        return None
    if _local_transformer_config(name) is not None and (not pipeline or local_json(name, "model_index.json") is not None):
        return None
    if pipeline:
        return f"pipeline '{name}' is not in the local Hugging Face cache; download it first (`hf download {name}`): the pipeline path never downloads"
    return (
        f"model '{name}' is not available offline; download it first (`hf download {name}`) "
        f"or set `model: {{name: {name}, download: true}}` in the suite"
    )


def num_classes(config: dict[str, Any] | None) -> int | None:
    """Class labels a class-conditional DiT knows (0..n-1) by its config; None if it does not say."""
    value = (config or {}).get("num_embeds_ada_norm")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


BUILTIN_PREDICTIONS: dict[str, str] = {"digits-flow": "flow"}
"""Built-in models that predict otherwise than their family's schedule says (a flow-matching
DiT), so `validate` knows their sampler without building them."""


def model_prediction(name: str) -> str | None:
    """What a model predicts, without loading weights: a built-in's (or its family's schedule),
    a checkpoint's scheduler config where it is on disk, else its family's; None if unknown."""
    from dqar_bench.model.sampling import prediction_type

    if name in BUILTIN_PREDICTIONS:
        return BUILTIN_PREDICTIONS[name]
    if name not in BUILTIN_MODELS:
        config = local_json(name, "scheduler/scheduler_config.json")
        if config is not None:
            return prediction_type(config)
    family = model_family(name)
    return prediction_type(dict(families.get(family).scheduler)) if family is not None else None


def default_sampler(name: str) -> str:
    """The sampler a suite gets when it names none: its family's, or flow-euler / ddim by what the model predicts."""
    family, prediction = model_family(name), model_prediction(name)
    own = families.get(family).sampler if family is not None else "ddim"
    if prediction is None or (prediction == "flow") == (own == "flow-euler"):
        return own
    return "flow-euler" if prediction == "flow" else "ddim"


def model_family(name: str) -> str | None:
    """A model's family without loading weights: built-in, the checkpoint's configs if they
    are on disk (a folder or the hub cache), else a guess from the name; None if unknown."""
    if name in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[name]
    found = _checkpoint_family(name)
    if found is not None:
        return found.name
    guessed = families.guess(name)
    return guessed.name if guessed is not None else None


def _checkpoint_family(name: str) -> Family | None:
    """From `model_index.json`'s pipeline class, else `transformer/config.json`'s class; raises for an unknown class."""
    index = local_json(name, "model_index.json")
    pipeline = str(index.get("_class_name")) if index else None
    config = local_json(name, "transformer/config.json")
    if config is None:
        return families.for_pipeline(pipeline) if pipeline else None
    class_name = str(config.get("_class_name"))
    found = families.for_class(class_name, pipeline)
    if found is None:
        raise ModelError(
            f"model '{name}': no model family matches its transformer class {class_name}; add a Family entry for it to "
            f"FAMILIES in dqar_bench/model/families.py (docs/models.md, 'Adding a model family'); families: {', '.join(families.names())}"
        )
    return found


def _local_transformer_config(name: str) -> dict[str, Any] | None:
    """A checkpoint's transformer config from a folder or the local hub cache; None if not on disk."""
    return local_json(name, "transformer/config.json")


def load_model(name: str, device: torch.device, dtype: torch.dtype, allow_download: bool = False, pipeline: bool = False,
               text_encoders: bool = False) -> LoadedModel:
    """Build a built-in model or load a diffusers checkpoint, on `device` in `dtype`; with
    `pipeline`, the checkpoint's whole pipeline, offline (`dqar_bench.model.pipelines`)."""
    if pipeline:
        return load_pipeline(name, device, dtype, text_encoders)
    if name in BUILTIN_MODELS:
        loaded = BUILTIN_MODELS[name]()
        loaded.transformer.to(dtype=dtype)
    else:  # loaded in `dtype`, so modules a model keeps in float32 (Wan's norms and RoPE) stay so
        loaded = _load_checkpoint(name, allow_download, dtype)
    loaded.transformer.to(device=device).eval().requires_grad_(False)
    loaded.transformer.dqar_family = loaded.family  # PixArt-alpha and -Sigma share a class: the sampler asks the model
    if loaded.vae is not None:
        loaded.vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return loaded


def _load_checkpoint(name: str, allow_download: bool, dtype: torch.dtype = torch.float32) -> LoadedModel:
    import diffusers

    model_config(name, allow_download)  # an unknown name or a missing folder: its one-line error
    local = Path(name).expanduser()
    is_local = local.exists()
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE") == "1"
    source = str(local) if is_local else name
    family = _checkpoint_family(name) or families.guess(name) or families.get("dit")
    model_class = getattr(diffusers, family.classes[0])
    try:
        with weights_only_loads():  # a checkpoint's .bin pickles are read as data, never run
            transformer, info = model_class.from_pretrained(
                source, subfolder="transformer", local_files_only=offline, torch_dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, EnvironmentError, RuntimeError) as exc:
        if is_local or not isinstance(exc, OSError):  # wrong-shape tensors, a refused pickle: the files are there
            raise ModelError(f"model '{name}' has no loadable {model_class.__name__} in 'transformer/': {first_line(exc)}") from None
        raise ModelError(
            f"model '{name}' is not available offline; download it first "
            f"(`hf download {name}`) or set `model: {{name: {name}, download: true}}` in the suite"
        ) from None
    _check_loading(name, "transformer", info)
    return LoadedModel(name, transformer, _scheduler_config(source, offline, family), _load_vae(name, source, offline), family.name, source)


def _check_loading(name: str, part: str, info: dict[str, Any]) -> None:
    """A checkpoint whose weights do not fill the model is refused: missing tensors would stay
    at their random start (every case then fails as "non-finite outputs", or worse, runs)."""
    missing, mismatched = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing:
        raise ModelError(
            f"model '{name}': '{part}/' weights lack {len(missing)} tensor(s) the model needs (e.g. {sorted(missing)[0]}); "
            f"the checkpoint is incomplete: download or save it again"
        )
    if mismatched:
        raise ModelError(f"model '{name}': '{part}/' weights have {len(mismatched)} tensor(s) of the wrong shape (e.g. {mismatched[0][0]}); the checkpoint does not match its config")


def _scheduler_config(source: str, offline: bool, family: Family) -> dict[str, Any]:
    try:
        from huggingface_hub import hf_hub_download

        path = Path(source) / "scheduler" / "scheduler_config.json"
        if not path.exists():
            path = Path(hf_hub_download(source, "scheduler/scheduler_config.json", local_files_only=offline))
        config = json.loads(path.read_text())
    except Exception:
        return dict(family.scheduler)
    shift = config.get("shift")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0):
        raise ModelError(f"{path}: field 'shift' is {shift!r}; a flow schedule's shift must be a number > 0 (1 leaves the schedule as it is)")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _load_vae(name: str, source: str, offline: bool) -> torch.nn.Module | None:
    """The checkpoint's VAE, of the class its config names (AutoencoderKL, AutoencoderKLWan, ...);
    None only where the checkpoint has none. A VAE that is there but does not load is refused:
    dropped, quality would move to the latents under a note saying the model has no VAE."""
    import diffusers

    config = local_json(source, "vae/config.json")
    if config is None:
        return None
    vae_class = getattr(diffusers, str(config.get("_class_name", "AutoencoderKL")), diffusers.AutoencoderKL)
    try:
        with weights_only_loads():
            vae, info = vae_class.from_pretrained(source, subfolder="vae", local_files_only=offline, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, the one line says what
        raise ModelError(f"model '{name}': its VAE in 'vae/' does not load ({type(exc).__name__}: {first_line(exc)[:200]}); fix or remove 'vae/'") from None
    _check_loading(name, "vae", info)
    return vae
