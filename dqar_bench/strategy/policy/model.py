"""The policy MLP and its file: weights, feature statistics and a description, in safetensors.

The file holds everything needed to use the policy: the layers, the mean and standard
deviation each feature is normalised with (taken from the training split), and metadata
naming the input size, the hidden sizes and the features in order. safetensors (not
pickle) so that loading a policy can never run code. Every way a file can be unusable
(missing, damaged, made for other features) ends in one `PolicyFileError` line that names
the file and how to get a good one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dqar_bench.core.errors import DqarError
from dqar_bench.strategy.policy.features import FEATURES

FORMAT = "dqar-bench-policy"
MAX_PARAMETERS = 500_000
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "dit-tiny.safetensors"
REMAKE = "make one with `dqar-bench trace` and `dqar-bench train-policy`, or leave 'weights' out for the shipped dit-tiny policy"


class PolicyFileError(DqarError):
    """A policy weights file that cannot be used."""


class PolicyMLP(torch.nn.Module):
    """Features -> logit that reusing here is safe; normalisation is part of the model."""

    def __init__(self, input_size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden = [int(h) for h in hidden]
        layers: list[torch.nn.Module] = []
        width = self.input_size
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(self.input_size))
        self.register_buffer("feature_std", torch.ones(self.input_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.feature_mean) / self.feature_std
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # unmeasured -> the mean
        return self.net(x).squeeze(-1)

    @torch.no_grad()
    def probability(self, features: torch.Tensor) -> torch.Tensor:
        """P(reuse is safe) for each row of `features` [rows, input_size]."""
        return torch.sigmoid(self(features))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_policy(model: PolicyMLP, path: str | Path, features: Sequence[str] = FEATURES, extra: dict[str, Any] | None = None) -> None:
    """Write the policy; `extra` (plain data: how it was trained) is kept in the metadata."""
    metadata = {
        "format": FORMAT,
        "input_size": str(model.input_size),
        "hidden_sizes": json.dumps(model.hidden),
        "features": json.dumps(list(features)),
    }
    if extra:
        metadata["training"] = json.dumps(extra, sort_keys=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_policy(path: str | Path, features: Sequence[str] = FEATURES) -> PolicyMLP:
    """Load a policy made for `features` (this version's, by default), on the CPU, eval mode.

    A relative path is taken from the current directory.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise PolicyFileError(f"policy weights file {path} is missing{where}; {REMAKE}")
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a bad header or body
        raise PolicyFileError(f"policy weights file {path} is damaged ({_describe(exc)}); {REMAKE}") from None
    if metadata.get("format") != FORMAT:
        raise PolicyFileError(f"policy weights file {path} is not a dqar-bench policy (metadata 'format' is not '{FORMAT}'); {REMAKE}")
    try:
        input_size = int(metadata["input_size"])
        hidden = json.loads(metadata["hidden_sizes"])
        names = json.loads(metadata["features"])
        if not (isinstance(hidden, list) and all(isinstance(h, int) and h > 0 for h in hidden)):
            raise ValueError("hidden_sizes must be a list of positive integers")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("features must be a list of names")
    except (KeyError, ValueError, TypeError) as exc:
        raise PolicyFileError(f"policy weights file {path} has bad metadata ({_describe(exc)}); {REMAKE}") from None
    expected = list(features)
    if input_size != len(expected) or names != expected:
        raise PolicyFileError(
            f"policy weights file {path} takes {input_size} inputs ({', '.join(map(str, names))}) but this version "
            f"computes {len(expected)} ({', '.join(expected)}); retrain it on a new trace with `dqar-bench train-policy`"
        )
    model = PolicyMLP(input_size, hidden)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise PolicyFileError(f"policy weights file {path} does not match its own metadata ({_describe(exc)}); {REMAKE}") from None
    if parameter_count(model) >= MAX_PARAMETERS:
        raise PolicyFileError(f"policy weights file {path} has {parameter_count(model)} parameters, the limit is {MAX_PARAMETERS}; train a smaller one")
    return model.eval().requires_grad_(False)


def _describe(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
