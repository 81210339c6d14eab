"""What a run ran on, recorded once per run so a figure can be traced to its setting.

GPU, driver, CUDA, library versions, the harness's version and git commit (with a dirty
flag: numbers from uncommitted code are worth knowing about), dtype, attention backend,
CPU model, seeds and the suite file's content hash. Every field that cannot be read is
None rather than a guess.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from dqar_bench import __version__
from dqar_bench.measure import nvml as nvml_mod

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def collect(device: torch.device, dtype: str, seeds: list[int], suite_hash: str, transformer: torch.nn.Module | None = None) -> dict[str, Any]:
    gpu = device.type == "cuda"
    commit, dirty = git_commit(PACKAGE_ROOT)
    env: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if gpu else None,
        "gpu_uuid": _uuid(device) if gpu else None,
        "driver": nvml_mod.driver_version() if gpu else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpu else None,
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "torch_fidelity": _version("torch_fidelity"),
        "dqar_bench": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype,
        "attention_backend": attention_backend(transformer, device),
        "seeds": list(seeds),
        "suite_hash": suite_hash,
    }
    return env


def git_commit(root: Path) -> tuple[str | None, bool | None]:
    """HEAD of the checkout dqar-bench runs from, and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def attention_backend(transformer: torch.nn.Module | None, device: torch.device) -> str | None:
    """The attention processor of the first block, and which SDPA kernels torch may use."""
    if transformer is None:
        return None
    processor = next((type(m.processor).__name__ for m in transformer.modules() if getattr(m, "processor", None) is not None), None)
    if device.type != "cuda":
        return processor
    kernels = [
        name
        for name, enabled in (
            ("flash", torch.backends.cuda.flash_sdp_enabled()),
            ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
            ("math", torch.backends.cuda.math_sdp_enabled()),
            ("cudnn", getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)()),
        )
        if enabled
    ]
    return f"{processor} (sdpa: {', '.join(kernels)})"


def _uuid(device: torch.device) -> str | None:
    try:
        return nvml_mod.torch_uuid(device)
    except Exception:
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None
