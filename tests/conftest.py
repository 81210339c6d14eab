"""Shared fixtures: a tiny model, a clean registry, and suite files written in tmp dirs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

# Tests see only what they register themselves, whatever is installed in the environment.
os.environ["DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a busy neighbour

EXAMPLE_PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "dqar-bench-every-other"


@pytest.fixture(scope="session")
def tiny():
    from dqar_bench.models import load_model

    return load_model("dit-tiny", torch.device("cpu"), torch.float32)


@pytest.fixture()
def registry():
    from dqar_bench.plugins import load_registry

    return load_registry(autoload=False)


@pytest.fixture()
def write_suite(tmp_path):
    """Write a suite file from a YAML snippet (dedented) and return its path."""

    def write(body: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path

    return write


SMALL_SUITE_HEAD = """\
name: small
model: dit-tiny
sampler: {name: ddim, steps: 6, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
baseline: baseline
"""


@pytest.fixture()
def fake_distribution(tmp_path, monkeypatch):
    """Make an entry point visible to importlib.metadata, as `pip install` would.

    Writes a `.dist-info` folder with `entry_points.txt` on sys.path; `module_dir` is put
    on sys.path too so the entry point's module imports.
    """

    def install(dist: str, entry_points: dict[str, str], module_dir: Path | None = None, version: str = "1.0") -> None:
        site = tmp_path / f"site-{dist}"
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[dqar_bench]\n{lines}\n")
        monkeypatch.syspath_prepend(str(site))
        if module_dir is not None:
            monkeypatch.syspath_prepend(str(module_dir))

    return install
