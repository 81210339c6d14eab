"""Block 0's timestep-modulated input: what TeaCache watches to decide whether a step can be skipped.

TeaCache (ali-vilab/TeaCache) runs the first block's modulation on its own before the
blocks, `norm1(x) * (1 + scale) + shift` with the timestep embedding's scale and shift,
and skips the whole block stack while that input has changed little. Where the
modulation sits differs by block class, so a family names it as data
(`families.Modulation`: the submodule and one of the recipes below), like its calling
convention. The recipes re-run only the modulation (a norm and a few element-wise
operations), never the block, exactly as the reference code does.

Recipes, by the block class they read:
- `ada-norm-zero`: `norm1(hidden_states, emb=temb)[0]` (FLUX, SD3, HunyuanVideo:
  diffusers' `AdaLayerNormZero`; TeaCache4FLUX and TeaCache4HunyuanVideo use exactly this);
- `dit-ada-norm-zero`: `norm1(hidden_states, timestep, class_labels)[0]` (DiT's
  `BasicTransformerBlock` with `ada_norm_zero`);
- `scale-shift-table`: `norm1(hidden_states) * (1 + scale_msa) + shift_msa` with
  `scale_shift_table + timestep` (PixArt's `ada_norm_single`);
- `timestep-embedding`: the block's `temb` argument itself, the timestep embedding the
  block modulates with (TeaCache4Wan2.1 with `use_ret_steps` reads `e0`, which is Wan's
  per-block `temb`; TeaCache4CogVideoX reads `emb`, CogVideoX's `temb`);
- `model-output`: the output, in the current forward, of a module of the transformer that
  runs before the blocks (`module` is its path on the transformer): TeaCache4Wan2.1 without
  `use_ret_steps` reads `e`, the time embedding before its per-block projection, which no
  block receives (`tap`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

Recipe = Callable[[torch.nn.Module, str, dict[str, Any]], torch.Tensor]


def _ada_norm_zero(block: torch.nn.Module, module: str, a: dict[str, Any]) -> torch.Tensor:
    return getattr(block, module)(a["hidden_states"], emb=a["temb"])[0]


def _dit_ada_norm_zero(block: torch.nn.Module, module: str, a: dict[str, Any]) -> torch.Tensor:
    hidden = a["hidden_states"]
    return getattr(block, module)(hidden, a.get("timestep"), a.get("class_labels"), hidden_dtype=hidden.dtype)[0]


def _scale_shift_table(block: torch.nn.Module, module: str, a: dict[str, Any]) -> torch.Tensor:
    hidden = a["hidden_states"]
    shift, scale = (block.scale_shift_table[None] + a["timestep"].reshape(hidden.shape[0], 6, -1)).chunk(6, dim=1)[:2]
    return getattr(block, module)(hidden) * (1 + scale) + shift


def _timestep_embedding(block: torch.nn.Module, module: str, a: dict[str, Any]) -> torch.Tensor:
    return a["temb"]


RECIPES: dict[str, Recipe] = {
    "ada-norm-zero": _ada_norm_zero,
    "dit-ada-norm-zero": _dit_ada_norm_zero,
    "scale-shift-table": _scale_shift_table,
    "timestep-embedding": _timestep_embedding,
}


def reader(block: torch.nn.Module, original: Callable[..., Any], module: str, recipe: str) -> Callable[[tuple, dict], torch.Tensor]:
    """A function of a call's (args, kwargs) that gives block 0's modulated input for that call."""
    signature = inspect.signature(original)
    run = RECIPES[recipe]

    def modulated(args: tuple, kwargs: dict) -> torch.Tensor:
        bound = signature.bind_partial(*args, **kwargs).arguments
        return run(block, module, bound)

    return modulated


def tap(model: torch.nn.Module, path: str) -> tuple[Callable[[tuple, dict], torch.Tensor], Any]:
    """A reader of `model.<path>`'s output in the current forward (recipe `model-output`), and
    the hook handle that feeds it (the caller removes it with the installation)."""
    held: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, out: Any) -> None:
        held[:] = [out[0] if isinstance(out, tuple) else out]

    handle = model.get_submodule(path).register_forward_hook(keep)

    def modulated(args: tuple, kwargs: dict) -> torch.Tensor:
        assert held, f"{path} did not run before block 0"
        return held[0]

    return modulated, handle
