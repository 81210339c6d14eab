"""Class accuracy: does an accelerated sample still show the class it was generated for?

On a trained class-conditional model this is the bluntest quality signal there is, and
the cheapest to trust: a classifier trained on real data reads the generated images.
Classifiers are named here so a suite can ask for one (`quality.classifier`).
"""

from __future__ import annotations

import importlib

import torch

CLASSIFIERS = {"digits": "dqar_bench.reference.classifier:class_accuracy"}
"""name -> "module:function(images, labels) -> float" (images uint8 or in [-1, 1])."""


def class_accuracy(name: str, images: torch.Tensor | None, labels: torch.Tensor | None) -> float | None:
    """Share of `images` the named classifier reads as their `labels`; None without images."""
    if images is None or labels is None:
        return None
    module, function = CLASSIFIERS[name].split(":")
    return float(getattr(importlib.import_module(module), function)(images, labels))
