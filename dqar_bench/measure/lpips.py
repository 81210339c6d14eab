"""LPIPS on decoded images: the perceptual distance the field reports next to PSNR and SSIM.

The network is the reference one (Zhang et al. 2018; `lpips.LPIPS` v0.1 of
richzhang/PerceptualSimilarity): images in [-1, 1] through LPIPS' scaling layer, an
ImageNet backbone (AlexNet or VGG16, torchvision's layer layout), the activations of five
layers unit-normalised over channels, their squared differences weighted by learned 1x1
convolutions (the "linear layers"), averaged over space and summed over layers. Images are
not resized, as in the reference; a backbone cannot see images smaller than its five
layers need (AlexNet 31 px, VGG16 16 px), and the record then says so instead of a value.

Both sets of weights are local files, and nothing is downloaded:

- `backbone`: torchvision's ImageNet checkpoint of the net (`alexnet-owt-7be5be79.pth`,
  `vgg16-397923af.pth`, as torchvision's download names them) or any file with the same
  `features.*` tensors; only those are read.
- `linear`: LPIPS' v0.1 linear-layer file for the net (`alex.pth`, `vgg.pth`). The `lpips`
  package ships them in its wheel (`lpips/weights/v0.1/`), so with that package installed
  the key may be left out; torch-fidelity's `weights-vgg16-lpips.pth` is the same `vgg.pth`.

Both are checked as plain weights (`dqar_bench.core.weights`) before anything runs.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dqar_bench.core.errors import DqarError
from dqar_bench.core.weights import check_weights_file

NETS = ("alex", "vgg")
FIELD = "quality.lpips"
SCALE_SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# per net: the feature layers in torchvision's order (VGG16: a conv's output channels or "M", a
# max pool), where each of the five taps ends, their channels, the smallest side all five can see
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool",),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",), ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool",)]
_VGG_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
MIN_SIDE = {"alex": 31, "vgg": 16}
LINEAR_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}


@dataclass(frozen=True)
class LpipsConfig:
    """The suite's `quality.lpips` mapping."""

    backbone: str
    """torchvision's ImageNet checkpoint of `net` (its `features.*` tensors)."""
    net: str = "alex"
    """'alex' (the reference's and torchmetrics' default) or 'vgg'."""
    linear: str | None = None
    """LPIPS' v0.1 linear-layer file for `net`; None: the one the `lpips` package ships."""


def features(net: str) -> nn.Sequential:
    """The backbone's feature layers in torchvision's order (so `features.N.*` keys load)."""
    layers: list[nn.Module] = []
    if net == "alex":
        for spec in _ALEX:
            if spec[0] == "conv":
                _, cin, cout, k, s, p = spec
                layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            else:
                layers.append(nn.ReLU() if spec[0] == "relu" else nn.MaxPool2d(3, 2))
        return nn.Sequential(*layers)
    cin = 3
    for item in _VGG_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU()]
            cin = int(item)
    return nn.Sequential(*layers)


class Lpips(nn.Module):
    """LPIPS distance between image batches in [0, 1]: one value per image pair."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown LPIPS net '{net}' (nets: {', '.join(NETS)})")
        self.net_name = net
        self.net = features(net)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor(SCALE_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @property
    def min_side(self) -> int:
        return MIN_SIDE[self.net_name]

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for end in TAPS[self.net_name]:
            x = self.net[start:end](x)
            out.append(x)
            start = end
        return out

    def forward(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        a = self.taps((images * 2 - 1 - self.shift) / self.scale)
        b = self.taps((reference * 2 - 1 - self.shift) / self.scale)
        total = torch.zeros(images.shape[0], device=images.device)
        for lin, fa, fb in zip(self.lins, a, b):
            diff = (_unit(fa) - _unit(fb)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


class LpipsScorer:
    """The mean LPIPS of decoded images (N, C, H, W) against the baseline's, or why there is none."""

    def __init__(self, model: Lpips, device: torch.device, batch_size: int = 16) -> None:
        self.model, self.device, self.batch_size = model.to(device), device, batch_size

    def refusal(self, images: torch.Tensor) -> str | None:
        if images.shape[1] not in (1, 3):
            return f"not computed: LPIPS needs RGB or grey images, these have {images.shape[1]} channels"
        side = min(images.shape[-2:])
        if side < self.model.min_side:
            return (f"not computed: the images are {images.shape[-2]}x{images.shape[-1]} px and LPIPS-{self.model.net_name} "
                    f"needs at least {self.model.min_side} px a side")
        return None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> float:
        values = []
        for a, b in zip(images.split(self.batch_size), reference.split(self.batch_size)):
            a, b = _rgb(a.float().clamp(0, 1).to(self.device)), _rgb(b.float().clamp(0, 1).to(self.device))
            values.append(self.model(a, b).double().cpu())
        return float(torch.cat(values).mean())


def linear_file(config: LpipsConfig) -> Path:
    """The linear-layer file: the suite's, else the one the `lpips` package ships (found without importing it)."""
    if config.linear is not None:
        return Path(config.linear).expanduser()
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise DqarError(
            f"field '{FIELD}.linear' is missing and the lpips package is not installed; give LPIPS' v0.1 "
            f"{LINEAR_FILES[config.net]} (or pip install lpips, whose wheel ships it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / LINEAR_FILES[config.net]


def check_lpips_files(config: LpipsConfig) -> None:
    """Both files are there and are plain weights; one line naming the field otherwise."""
    if config.net not in NETS:
        raise DqarError(f"field '{FIELD}.net': unknown net '{config.net}' (nets: {', '.join(NETS)})")
    for key in ("backbone", "linear"):
        path = Path(config.backbone).expanduser() if key == "backbone" else linear_file(config)
        if not path.is_file():
            raise DqarError(f"field '{FIELD}.{key}': no file at {path}; give a local {_what(key, config.net)} (nothing is downloaded)")
        check_weights_file(path, f"LPIPS {key} weights ('{FIELD}.{key}')")


def load_lpips(config: LpipsConfig, device: torch.device) -> LpipsScorer:
    """The reference LPIPS with the suite's backbone and linear weights, on `device`."""
    check_lpips_files(config)
    model = Lpips(config.net)
    backbone = _load(Path(config.backbone).expanduser())
    feats = {k[len("features."):]: v for k, v in backbone.items() if k.startswith("features.")}
    _assign(model.net, feats, f"{FIELD}.backbone", f"torchvision's {config.net} ImageNet checkpoint")
    linear = _load(linear_file(config))
    lins = {}
    for key, value in linear.items():
        match = re.fullmatch(r"lin(\d)\.(?:model\.\d+\.)?weight", key)
        if match:
            lins[f"{match.group(1)}.weight"] = value
    _assign(model.lins, lins, f"{FIELD}.linear", f"LPIPS' v0.1 {LINEAR_FILES[config.net]}")
    return LpipsScorer(model, device)


def _assign(module: nn.Module, state: dict[str, torch.Tensor], field: str, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        detail = f"lacks {missing[0]}" if missing else f"has {wrong[0]} of shape {tuple(state[wrong[0]].shape)}, not {tuple(expected[wrong[0]].shape)}"
        raise DqarError(f"field '{field}': the file {detail}; give {what}")
    module.load_state_dict({k: state[k].float() for k in expected})


def _load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else {}


def _what(key: str, net: str) -> str:
    return f"torchvision ImageNet checkpoint of {net}" if key == "backbone" else f"LPIPS v0.1 linear-layer file ({LINEAR_FILES[net]})"


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
