"""The suite's conditioning for a loaded model, from whichever source the suite names.

It stands above `conditioning` (labels, synthetic captions, embedding files, PixArt's T5)
and `pipelines` (a checkpoint's own `encode_prompt`), so neither needs the other.
"""

from __future__ import annotations

from typing import Any

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.model.conditioning import embeddings_condition, synthetic_captions, t5_condition
from dqar_bench.model.pipelines import encode_prompts
from dqar_bench.model.sampling import Condition, labels_condition


def condition_for(suite: Any, model: Any, device: torch.device, dtype: torch.dtype) -> Condition:
    """The suite's conditioning for `model` (`dqar_bench.config.suite.Suite`, `loaded.LoadedModel`)."""
    text = model.spec.text
    if suite.prompts and getattr(model, "pipeline", None) is not None:
        return encode_prompts(model, suite.prompts, device, dtype)
    if text is None:
        return labels_condition(suite.class_labels, model.null_class, device)
    if suite.prompt_embeddings:
        return embeddings_condition(suite.prompt_embeddings, device, dtype, text, model.text_length)
    if suite.prompts:
        if text.encoder != "t5":
            raise ModelError(
                f"model '{model.name}' (family {model.family}) encodes prompts with its own pipeline's text encoders; "
                f"give 'prompt_lengths' (synthetic captions) or 'prompt_embeddings' (a .safetensors file) instead"
            )
        return t5_condition(model.source or model.name, suite.prompts, device, dtype, not suite.allow_download, text, model.text_length)
    if suite.prompt_lengths:
        return synthetic_captions(suite.prompt_lengths, model.text_width or 4096, device, dtype, text, model.pooled_width, model.text_length)
    raise ModelError(f"model '{model.name}' is text-conditioned: give 'prompt_lengths', 'prompts' or 'prompt_embeddings' in the suite")
