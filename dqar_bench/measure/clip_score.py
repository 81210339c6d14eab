"""CLIP score for text-conditioned models: how well each image matches its prompt.

The score is the standard one (Hessel et al. 2021, as torchmetrics' `CLIPScore` computes
it): 100 * max(cos(image embedding, text embedding), 0) per image, averaged over images.
It is absolute, not paired: every case, the baseline included, gets its own, so a table
shows what a strategy costs in prompt agreement next to what the untouched model reaches.
A video scores as the mean over its frames (each frame against the video's prompt).

The model is a local CLIP checkpoint folder in the transformers layout (what
`CLIPModel.save_pretrained` and `CLIPProcessor.save_pretrained` write, e.g. a download of
`openai/clip-vit-large-patch14`), loaded with `local_files_only=True`: it never downloads.
`transformers` is imported only here, when a suite asks for CLIP score (the `text` extra).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.core.weights import check_weights_file, weights_only_loads
from dqar_bench.measure.fidelity import unit_to_uint8

FIELD = "quality.clip.weights"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
BATCH = 32
NEEDS_TRANSFORMERS = f"field '{FIELD}': CLIP score needs the transformers package: pip install 'dqar-bench[text]'"


class ClipScorer(Protocol):
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB images (N, 3, H, W) -> embeddings (N, D)."""
        ...

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> embeddings (N, D)."""
        ...


def image_scores(images: torch.Tensor, prompts: Sequence[str], scorer: ClipScorer, batch_size: int = BATCH) -> torch.Tensor:
    """100 * max(cos, 0) of each uint8 image (N, 3, H, W) with its prompt, in chunks of `batch_size`."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    scores = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk, texts = images[start:start + batch_size], list(prompts[start:start + batch_size])
            img = torch.nn.functional.normalize(scorer.image_features(chunk).float(), dim=-1)
            txt = torch.nn.functional.normalize(scorer.text_features(texts).float(), dim=-1)
            scores.append(100.0 * (img * txt).sum(dim=-1).clamp(min=0).cpu())
    return torch.cat(scores)


def clip_score(images: torch.Tensor, prompts: Sequence[str], scorer: ClipScorer, batch_size: int = BATCH) -> dict[str, Any]:
    """The record's `clip` field for N images (N, C, H, W) or videos (N, C, F, H, W) and their N prompts.

    Images are uint8, or floats in [0, 1] (decoded), which are rounded to uint8 as the
    reference takes them; grey images are read as RGB."""
    if images.dtype != torch.uint8:
        images = unit_to_uint8(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, *images.shape[2:])
    truncated = getattr(scorer, "truncated", None)
    frames = images.shape[2] if images.dim() == 5 else None
    if frames is not None:  # every frame against its video's prompt, then the mean over the frames
        flat = images.transpose(1, 2).flatten(0, 1)
        per = image_scores(flat, [p for p in prompts for _ in range(frames)], scorer, batch_size).view(-1, frames).mean(dim=1)
    else:
        per = image_scores(images, prompts, scorer, batch_size)
    return {
        "clip_score": float(per.mean()),
        "clip_score_std": float(per.std()) if len(per) > 1 else 0.0,
        "n": len(per),
        "frames": frames,
        "per": f"video (mean over its {frames} frames)" if frames is not None else "image",
        "truncated_prompts": (getattr(scorer, "truncated") - truncated) // (frames or 1) if truncated is not None else None,
    }


class TransformersClip:
    """A transformers `CLIPModel` with its checkpoint's own tokenizer and image processor."""

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model, self.device = model, device
        self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self.truncated = 0
        """Prompts cut to the text tower's length (77 tokens for OpenAI's CLIP), as torchmetrics cuts them."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.image_processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"].to(self.device)
        pooled = self.model.vision_model(pixel_values=pixels.to(self.model.dtype)).pooler_output
        return self.model.visual_projection(pooled)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        self.truncated += sum(len(ids) > self.max_tokens for ids in self.tokenizer(list(prompts))["input_ids"])
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return self.model.text_projection(pooled)


def check_clip_checkpoint(folder: str | Path) -> None:
    """What `load_clip` needs is on disk, as plain weights, and `transformers` is installed; one line otherwise."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DqarError(f"field '{FIELD}': {root} is not a folder; give a local CLIP checkpoint folder (CLIPModel and CLIPProcessor saved with save_pretrained); nothing is downloaded")
    config = root / "config.json"
    if not config.is_file():
        raise DqarError(f"field '{FIELD}': {root} has no config.json; give a CLIP checkpoint folder in the transformers layout")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DqarError(f"field '{FIELD}': {config} is not a JSON config ({exc})") from None
    if model_type != "clip":
        raise DqarError(f"field '{FIELD}': {config} is a '{model_type}' model, not 'clip'; give a CLIP checkpoint folder")
    weights = next((root / name for name in WEIGHTS_FILES if (root / name).is_file()), None)
    if weights is None:
        raise DqarError(f"field '{FIELD}': {root} has no weights ({' or '.join(WEIGHTS_FILES)}); download the whole checkpoint")
    check_weights_file(weights, f"CLIP weights ('{FIELD}')")
    if not any(all((root / name).is_file() for name in group) for group in TOKENIZER_FILES):
        raise DqarError(f"field '{FIELD}': {root} has no tokenizer (vocab.json and merges.txt, or tokenizer.json); download the whole checkpoint")
    if not any((root / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        raise DqarError(f"field '{FIELD}': {root} has no image processor ({' or '.join(IMAGE_PROCESSOR_FILES)}); download the whole checkpoint")
    if importlib.util.find_spec("transformers") is None:
        raise DqarError(NEEDS_TRANSFORMERS)


def load_clip(folder: str | Path, device: torch.device) -> TransformersClip:
    """The checkpoint in `folder`, on `device`, in eval mode; never downloads."""
    check_clip_checkpoint(folder)
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError:
        raise DqarError(NEEDS_TRANSFORMERS) from None
    root = str(Path(folder).expanduser())
    try:
        with weights_only_loads():  # a checkpoint's .bin pickle is read as data, never run
            model = CLIPModel.from_pretrained(root, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(root, local_files_only=True)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise DqarError(f"field '{FIELD}': {root} cannot be loaded as a CLIP checkpoint ({type(exc).__name__}: {message})") from None
    return TransformersClip(model.to(device).eval().requires_grad_(False), processor, device)
