"""A checkpoint folder that is not what it claims is refused in one line at load, never
half-loaded: missing or wrong-shape tensors, a VAE that does not load, a flow shift that is
no shift, a config that is not JSON."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dqar_bench.core.errors import ModelError
from dqar_bench.model.models import load_model

CPU = torch.device("cpu")


@pytest.fixture()
def checkpoint(tmp_path, monkeypatch):
    """An SD3-family folder saved from the tiny built-in: transformer, VAE, flow scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = load_model("sd3-tiny", CPU, torch.float32)
    folder = tmp_path / "ckpt"
    tiny.transformer.save_pretrained(folder / "transformer")
    tiny.vae.save_pretrained(folder / "vae")
    FlowMatchEulerDiscreteScheduler(shift=2.5).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    load_model(str(folder), CPU, torch.float32)  # sound as saved
    return folder


def weights(folder, part):
    return next((folder / part).glob("*.safetensors"))


def refused(folder, match):
    with pytest.raises(ModelError, match=match) as info:
        load_model(str(folder), CPU, torch.float32)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_transformer_missing_half_its_tensors_is_refused(checkpoint):
    path = weights(checkpoint, "transformer")
    tensors = load_file(str(path))
    keep = sorted(tensors)[::2]
    save_file({k: tensors[k] for k in keep}, str(path))
    refused(checkpoint, r"'transformer/' weights lack \d+ tensor\(s\) the model needs .* incomplete")


def test_wrong_shape_tensors_are_one_line_not_a_traceback(checkpoint):
    path = weights(checkpoint, "transformer")
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 3, 3)
    save_file(tensors, str(path))
    refused(checkpoint, "model '.*ckpt'")


def test_a_vae_that_does_not_load_is_refused_not_dropped(checkpoint):
    weights(checkpoint, "vae").write_bytes(b"not safetensors")
    refused(checkpoint, "its VAE in 'vae/' does not load")


@pytest.mark.parametrize("shift", [-3, 0, "2"])
def test_a_flow_shift_that_is_no_shift_is_refused(checkpoint, shift):
    config_path = checkpoint / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "shift": shift}))
    message = refused(checkpoint, "field 'shift'")
    assert "scheduler_config.json" in message and "must be a number > 0" in message


def test_an_invalid_model_index_is_named_invalid_not_missing(checkpoint):
    (checkpoint / "model_index.json").write_text("{not json")
    message = refused(checkpoint, "model_index.json: not valid JSON")
    assert "missing" not in message
