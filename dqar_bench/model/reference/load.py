"""Loading the shipped reference weights, with safetensors only.

safetensors (not pickle) so loading a weights file can never run code. Every way the files
can be unusable (missing, truncated, edited, from another architecture) ends in one
`ModelError` whose single line names the file and the command that rebuilds it, because
that is all a user needs to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dqar_bench.core.errors import ModelError
from dqar_bench.model.reference.network import DigitClassifier

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FLOW_WEIGHTS_DIR = WEIGHTS_DIR / "digits-flow"
"""digits-flow (rectified flow, flow-matching Euler) keeps the same file names in a folder of its own;
it is scored with the classifier in WEIGHTS_DIR."""

# diffusers' own file names, so `DiTTransformer2DModel.from_pretrained(WEIGHTS_DIR)` and
# `DDIMScheduler.from_pretrained(WEIGHTS_DIR)` also work on this folder.
DIT_CONFIG_FILE = "config.json"
DIT_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
CLASSIFIER_WEIGHTS_FILE = "classifier.safetensors"
METRICS_FILE = "metrics.json"

RETRAIN_COMMAND = "python scripts/train_reference.py"
FLOW_RETRAIN_COMMAND = "python scripts/train_flow_reference.py"

NULL_CLASS = 10
"""Class label meaning "unconditional" (DiT's extra embedding row, used by classifier-free guidance)."""


class _Model(NamedTuple):
    """Where a shipped model's files live by default, and the command that rebuilds them."""

    folder: Path
    command: str


_DIGITS_DIT = _Model(WEIGHTS_DIR, RETRAIN_COMMAND)
_DIGITS_FLOW = _Model(FLOW_WEIGHTS_DIR, FLOW_RETRAIN_COMMAND)


def _unusable(path: Path, problem: str, source: _Model = _DIGITS_DIT) -> ModelError:
    return ModelError(f"reference weights file {path} {problem}; retrain it with: {source.command}")


def _describe(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _resolve(weights_dir: Path | None, name: str, source: _Model = _DIGITS_DIT) -> Path:
    path = (source.folder if weights_dir is None else Path(weights_dir)) / name
    if not path.is_file():
        raise _unusable(path, "is missing", source)
    return path


def _read_json(weights_dir: Path | None, name: str, source: _Model = _DIGITS_DIT) -> dict[str, Any]:
    path = _resolve(weights_dir, name, source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unusable(path, f"is damaged ({_describe(exc)})", source) from exc
    if not isinstance(data, dict):
        raise _unusable(path, "is damaged (not a JSON object)", source)
    return data


def _read_tensors(path: Path, source: _Model = _DIGITS_DIT) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a bad header or body
        raise _unusable(path, f"is damaged ({_describe(exc)})", source) from exc
    return tensors, metadata


def _load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, source: _Model = _DIGITS_DIT) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise _unusable(path, f"does not match its architecture ({_describe(exc)})", source) from exc


def _config(weights_dir: Path | None, name: str, source: _Model) -> dict[str, Any]:
    return {k: v for k, v in _read_json(weights_dir, name, source).items() if not k.startswith("_")}


def _load_dit(weights_dir: Path | None, source: _Model) -> DiTTransformer2DModel:
    config_path = _resolve(weights_dir, DIT_CONFIG_FILE, source)
    config = _config(weights_dir, DIT_CONFIG_FILE, source)
    from diffusers import DiTTransformer2DModel  # here, not at the top: `validate` reads this module's paths, and diffusers costs seconds of start-up time

    try:
        model = DiTTransformer2DModel.from_config(config)
    except Exception as exc:
        raise _unusable(config_path, f"is damaged ({_describe(exc)})", source) from exc
    weights_path = _resolve(weights_dir, DIT_WEIGHTS_FILE, source)
    tensors, _ = _read_tensors(weights_path, source)
    _load_state(model, tensors, weights_path, source)
    return model.eval().requires_grad_(False)


def load_reference_dit_config(weights_dir: Path | None = None) -> dict[str, Any]:
    """The DiT's diffusers config (sample size, patch size, class count) without building it."""
    return _config(weights_dir, DIT_CONFIG_FILE, _DIGITS_DIT)


def reference_weights_present(weights_dir: Path | None = None) -> None:
    """Raise the one-line `ModelError` now if a file the reference DiT needs is missing."""
    for name in (DIT_CONFIG_FILE, DIT_WEIGHTS_FILE, SCHEDULER_CONFIG_FILE):
        _resolve(weights_dir, name)


def load_reference_dit(weights_dir: Path | None = None) -> DiTTransformer2DModel:
    """The trained reference DiT on CPU, float32, in eval mode (label dropout off)."""
    return _load_dit(weights_dir, _DIGITS_DIT)


def load_reference_scheduler_config(weights_dir: Path | None = None) -> dict[str, Any]:
    """The DDIM schedule the DiT was trained with; build the sampler from this, not from defaults."""
    return _config(weights_dir, SCHEDULER_CONFIG_FILE, _DIGITS_DIT)


def load_reference_metrics(weights_dir: Path | None = None) -> dict[str, Any]:
    """The figures measured when the weights were trained (also printed in MODEL_CARD.md)."""
    return _read_json(weights_dir, METRICS_FILE)


def classifier_weights_path() -> Path:
    """Where the shipped digit classifier's weights are (they may be missing: see `load_classifier`)."""
    return WEIGHTS_DIR / CLASSIFIER_WEIGHTS_FILE


def load_flow_reference_dit_config(weights_dir: Path | None = None) -> dict[str, Any]:
    """digits-flow's diffusers config, without building it."""
    return _config(weights_dir, DIT_CONFIG_FILE, _DIGITS_FLOW)


def load_flow_reference_dit(weights_dir: Path | None = None) -> DiTTransformer2DModel:
    """The trained flow-matching reference DiT (predicts the velocity noise - x0 at timestep
    sigma * 1000) on CPU, float32, in eval mode."""
    return _load_dit(weights_dir, _DIGITS_FLOW)


def load_flow_reference_scheduler_config(weights_dir: Path | None = None) -> dict[str, Any]:
    """The `FlowMatchEulerDiscreteScheduler` config (shift included) digits-flow's figures were
    measured with; build the sampler from this, not from defaults."""
    return _config(weights_dir, SCHEDULER_CONFIG_FILE, _DIGITS_FLOW)


def load_flow_reference_metrics(weights_dir: Path | None = None) -> dict[str, Any]:
    """digits-flow's figures as measured when it was trained (also in its MODEL_CARD.md)."""
    return _read_json(weights_dir, METRICS_FILE, _DIGITS_FLOW)


def load_classifier(weights_dir: Path | None = None, *, path: Path | None = None) -> DigitClassifier:
    """The digit classifier in eval mode; `path` names a classifier `.safetensors` file directly
    (torch-fidelity's `feature_extractor_weights_path`), overriding `weights_dir`."""
    if path is None:
        weights_path = _resolve(weights_dir, CLASSIFIER_WEIGHTS_FILE)
    else:
        weights_path = Path(path)
        if not weights_path.is_file():
            raise _unusable(weights_path, "is missing")
    tensors, metadata = _read_tensors(weights_path)

    try:
        arch = {k: int(metadata[k]) for k in ("resolution", "width", "feature_dim", "num_classes")}
        model = DigitClassifier(**arch)
    except (KeyError, ValueError) as exc:
        raise _unusable(weights_path, f"is damaged (bad metadata, {_describe(exc)})") from exc
    _load_state(model, tensors, weights_path)
    return model.eval().requires_grad_(False)
