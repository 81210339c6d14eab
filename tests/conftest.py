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
# tiny models: one thread is fastest and immune to a busy neighbour; .ci/run reruns the tests that
# hold stored references with DQAR_BENCH_TEST_THREADS=2, so no exact float depends on the thread count
torch.set_num_threads(int(os.environ.get("DQAR_BENCH_TEST_THREADS", "1")))

EXAMPLE_PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "dqar-bench-every-other"


@pytest.fixture(scope="session")
def tiny():
    from dqar_bench.model.models import load_model

    return load_model("dit-tiny", torch.device("cpu"), torch.float32)


@pytest.fixture()
def registry():
    from dqar_bench.core.plugins import load_registry

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


REPORT_SUITE = """\
name: small-report
description: a small run for the report tests
model: dit-tiny
sampler: {name: ddim, steps: 6, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0, 1]
device: cpu
timing: {warmup: 0, repeats: 2}
baseline: baseline
cases:
  - name: baseline
  - name: iv
    description: every other step
    gate: {name: interval, every: 2}
  - name: ent
    gate: {name: entropy, threshold: 0.981}   # 2.72 nats / log 16
  - name: boom
    gate: never
  - name: graphs
    gate: {name: interval, every: 2}
    execution: cudagraph
"""


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """A small run for the report's tests: its RunDir, records by case, report text and what `run` printed.

    dit-tiny, 6 steps, two seeds, two timed repeats; a case that reuses on a fixed interval,
    one whose gate reads data, one that fails, and one that cannot run on the CPU.
    """
    import io

    from dqar_bench.cli import main
    from dqar_bench.measure.records import RunDir
    from dqar_bench.runs import case_run

    root = tmp_path_factory.mktemp("report")
    suite = root / "suite.yaml"
    suite.write_text(REPORT_SUITE)
    real = case_run.build_strategy

    def build(case, registry, probe_queries=16):
        if case.name.startswith("boom"):
            raise RuntimeError("part exploded")
        return real(case, registry, probe_queries)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(case_run, "build_strategy", build)
        mp.setattr("sys.stdout", printed)
        assert main(["run", str(suite), "-o", str(root / "run")]) == 1  # 'boom' failed
    run = RunDir(root / "run")
    records = {r.case: r for r in run.records()}
    page = (run.path / "report.html").read_text()
    return run, records, page, printed.getvalue()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests that start processes or a browser are slow too, so `-m "not slow"` is the whole fast subset."""
    for item in items:
        if item.get_closest_marker("distributed") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
