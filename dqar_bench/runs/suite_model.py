"""A suite's model, loaded and called the way every command does it.

`run`, `trace`, `tune` and `calibrate` all need the same things before their first call:
the device, the suite's CPU thread count, the model with the suite's resolution, the class
labels checked against it, and the suite's conditioning. They get them here, so that a
command cannot load a model another way than the run it prepares for (a `pipeline:` suite,
a resolution, labels out of range).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from dqar_bench.config.suite import Suite, device_refusal
from dqar_bench.core.errors import DqarError, ModelError, SuiteError
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.models import load_model
from dqar_bench.model.resolution import set_resolution
from dqar_bench.model.sampling import Condition, denoise, make_scheduler
from dqar_bench.model.suite_condition import condition_for


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reason = device_refusal(name)
    if reason:
        raise DqarError(f"device {reason}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DqarError(f"device '{name}' was asked for but no CUDA device is available; set 'device: cpu' or 'auto'")
    return device


@contextlib.contextmanager
def suite_threads(suite: Suite, device: torch.device) -> Iterator[None]:
    """Torch at the suite's thread count on a CPU (threads beyond it fight on a shared CPU), restored after."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(suite.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_for_suite(suite: Suite, device: torch.device) -> tuple[LoadedModel, Condition]:
    """The suite's model (its pipeline, its resolution) and conditioning, with its labels checked."""
    dtype = getattr(torch, suite.dtype)
    model = load_model(suite.model, device, dtype, suite.allow_download, suite.pipeline, bool(suite.prompts))
    if suite.resolution is not None:
        apply_resolution(suite, model)
    check_labels(suite, model)
    return model, condition_for(suite, model, device, dtype)


def lean_call(suite: Suite, model: LoadedModel, condition: Condition, seed: int, observer: Any = None) -> torch.Tensor:
    """One sampling call on the harness's own loop, with a fresh scheduler of the suite's sampler."""
    scheduler = make_scheduler(suite.sampler, model.scheduler_config)
    return denoise(model.transformer, scheduler, condition, seed, suite.steps, suite.guidance_scale, observer)


def apply_resolution(suite: Suite, model: LoadedModel) -> None:
    """The suite's `resolution` on the loaded model, with the checks validate could not make without it."""
    try:
        set_resolution(model, suite.resolution)
    except ModelError as exc:
        raise SuiteError(f"{suite.path}: field 'resolution': {exc}") from None


def check_labels(suite: Suite, model: LoadedModel) -> None:
    """Class labels must exist in the model, or its label embedding fails deep inside the forward."""
    if model.family != "dit":
        return
    bad = [c for c in suite.class_labels if not 0 <= c < model.null_class]
    if bad:
        raise ModelError(f"{suite.path}: field 'class_labels': {bad[0]} is out of range for model '{suite.model}' (0..{model.null_class - 1})")
