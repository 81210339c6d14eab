"""Class accuracy: does an accelerated sample still show the class it was generated for?

On a trained class-conditional model this is the bluntest quality signal there is, and
the cheapest to trust: a classifier trained on real data reads the generated images.
Classifiers are named here so a suite can ask for one (`quality.classifier`).
"""

from __future__ import annotations

import importlib

import torch

from dqar_bench.core.errors import DqarError

CLASSIFIERS = {"digits": "dqar_bench.model.reference.classifier:class_accuracy"}
"""name -> "module:function(images, labels) -> float" (images uint8 or in [-1, 1])."""
CLASSIFIER_WEIGHTS = {"digits": "dqar_bench.model.reference.load:classifier_weights_path"}
"""name -> "module:function() -> Path" of the weights file it loads (checked before a run)."""


def check_classifier(name: str) -> None:
    """The classifier's weights file must be there before any sampling is done for it."""
    if name not in CLASSIFIERS:
        raise DqarError(f"field 'quality.classifier': unknown classifier '{name}' (classifiers: {', '.join(CLASSIFIERS)})")
    module, function = CLASSIFIER_WEIGHTS[name].split(":")
    path = getattr(importlib.import_module(module), function)()
    if not path.is_file():
        raise DqarError(f"field 'quality.classifier': classifier '{name}' needs its weights file {path}, which is missing; reinstall dqar-bench or retrain it")


def class_accuracy(name: str, images: torch.Tensor | None, labels: torch.Tensor | None) -> float | None:
    """Share of `images` the named classifier reads as their `labels`; None without images."""
    if images is None or labels is None:
        return None
    module, function = CLASSIFIERS[name].split(":")
    return float(getattr(importlib.import_module(module), function)(images, labels))
