"""What the two-process FID test and its one-process reference share: model, sampler, protocol."""

from __future__ import annotations

from typing import Callable

import torch

FID_COUNT, FID_BATCH = 25, 10  # three sampling calls, the last one trimmed to 5 images
FID_STEPS = 8
FID_EXTRACTOR = "dqar-digits-classifier"
FID_METRICS = ("fid", "isc", "kid")
FID_REFERENCE = "digits-heldout"


def fid_sampler() -> tuple[Callable[[int, list[int]], torch.Tensor], object, int]:
    """The reference model's sampling call as the runner makes FID images with it, a kit, its class count."""
    from dqar_bench.measure.instruments import Instruments
    from dqar_bench.model.models import load_model
    from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler

    device = torch.device("cpu")
    model = load_model("digits-dit", device, torch.float32)
    scheduler = make_scheduler("ddim", model.scheduler_config)

    def call(seed: int, labels: list[int]) -> torch.Tensor:
        return denoise(model.transformer, scheduler, labels_condition(labels, model.null_class, device), seed, FID_STEPS, 1.5)

    return call, Instruments(device=device), model.null_class
