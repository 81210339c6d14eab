"""Writing a trained reference model's files: diffusers' layout, safetensors, atomic writes.

Shared by both reference trainings (`train.py` for digits-dit, `train_flow.py` for digits-flow)
so their folders load the same way. Every file is written to a temporary name and renamed, so an
interrupted run never leaves a half-written weights file that looks whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffusers import DiTTransformer2DModel
from torch import nn

from dqar_bench.model.reference.load import DIT_CONFIG_FILE, DIT_WEIGHTS_FILE, SCHEDULER_CONFIG_FILE

MODEL_CARD_FILE = "MODEL_CARD.md"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, module: nn.Module, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_dit(model: DiTTransformer2DModel, out_dir: Path) -> None:
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    write_json(out_dir / DIT_CONFIG_FILE, config)
    save_tensors(out_dir / DIT_WEIGHTS_FILE, model, {"format": "pt"})


def save_scheduler_config(scheduler: Any, out_dir: Path) -> None:
    """The scheduler's full config (defaults written out), so the folder pins the schedule even if
    a later diffusers changes a default; `_class_name` says which scheduler it is."""
    config = dict(scheduler.config)
    config["_class_name"] = type(scheduler).__name__
    config.pop("_use_default_values", None)
    write_json(out_dir / SCHEDULER_CONFIG_FILE, config)
