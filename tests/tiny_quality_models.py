"""Quality models built in code for tests: a tiny CLIP checkpoint and random LPIPS weights.

Both are written to disk in the layout a real download has (a transformers CLIP folder;
torchvision's backbone checkpoint and LPIPS' linear-layer file), so the tests load them
through the same suite keys and loaders a real run uses, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n</w>")


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table, which CLIP's byte-level BPE reads its vocabulary in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip(folder: Path, seed: int = 0, max_tokens: int = 16, image_size: int = 32) -> Path:
    """A CLIP with 2-layer, 32-wide towers and random weights from `seed`, its BPE tokenizer
    (every byte, every byte at a word's end, a few merges) and image processor, saved to `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=max_tokens, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    model.save_pretrained(str(folder))
    return folder


def write_lpips_weights(folder: Path, net: str = "alex", seed: int = 0) -> tuple[Path, Path]:
    """Random LPIPS weights in the reference files' layouts: a torchvision-style backbone
    checkpoint (`features.*`, plus a classifier tensor LPIPS must ignore) and a v0.1
    linear-layer file (`linN.model.1.weight`, non-negative as the trained ones are)."""
    from dqar_bench.measure.lpips import CHANNELS, features

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone = {f"features.{k}": v for k, v in features(net).state_dict().items()}
    backbone["classifier.1.weight"] = torch.randn(4, 4)
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) / c for i, c in enumerate(CHANNELS[net])}
    paths = folder / f"{net}-backbone.pth", folder / f"{net}.pth"
    torch.save(backbone, paths[0])
    torch.save(linear, paths[1])
    return paths
