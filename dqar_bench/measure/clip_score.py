"""CLIP score for text-conditioned models: how well each image matches its prompt.

The built-in models are class-conditional, so the runner does not call this yet; it is the
hook a text-conditioned adapter plugs into. The score is the usual one (Hessel et al.
2021, as torchmetrics computes it): 100 * max(cos(image embedding, text embedding), 0),
averaged over images. Any object with `image_features` and `text_features` can score;
`load_open_clip` builds one from a local weights file with open_clip, and never downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from dqar_bench.errors import DqarError

class ClipScorer(Protocol):
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB images (N, 3, H, W) -> embeddings (N, D)."""
        ...

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """N prompts -> embeddings (N, D)."""
        ...


def clip_score(images: torch.Tensor, prompts: Sequence[str], scorer: ClipScorer) -> dict[str, Any]:
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    with torch.no_grad():
        img = torch.nn.functional.normalize(scorer.image_features(images).float(), dim=-1)
        txt = torch.nn.functional.normalize(scorer.text_features(prompts).float(), dim=-1)
    scores = 100.0 * (img * txt).sum(dim=-1).clamp(min=0)
    return {"clip_score": float(scores.mean()), "clip_score_std": float(scores.std()) if len(scores) > 1 else 0.0, "n": len(scores)}


class _OpenClip:
    def __init__(self, model: Any, preprocess_size: int, tokenizer: Any, device: torch.device) -> None:
        self.model, self.size, self.tokenizer, self.device = model, preprocess_size, tokenizer, device
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device).view(1, 3, 1, 1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return self.model.encode_image((x - self.mean) / self.std)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))


def load_open_clip(weights_path: str | None, model_name: str = "ViT-B-32", device: torch.device | None = None) -> ClipScorer:
    """An open_clip model from a local checkpoint; a one-line error if that cannot be done offline."""
    if weights_path is None or not Path(weights_path).expanduser().is_file():
        raise DqarError(f"CLIP score needs local CLIP weights and dqar-bench downloads nothing: pass weights_path, a local open_clip checkpoint for {model_name} (no file at {weights_path})")
    try:
        import open_clip
    except ImportError:
        raise DqarError("CLIP score needs the open_clip_torch package (pip install open_clip_torch)") from None
    device = device or torch.device("cpu")
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(Path(weights_path).expanduser()), device=device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return _OpenClip(model.eval(), size, open_clip.get_tokenizer(model_name), device)
