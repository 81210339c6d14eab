"""dqar-bench from Python: run a suite written in code, or a suite file, and get its table.

    from dqar_bench import Case, Suite, run

    suite = Suite(
        name="interval-vs-baseline",
        model="dit-tiny",
        sampler={"name": "ddim", "steps": 8},
        device="cpu",
        cases=[Case(name="baseline"), Case(name="every-2", gate={"name": "interval", "every": 2})],
    )
    frame = run(suite, "results/runs/interval")
    print(frame[["case", "speedup", "psnr_db"]])

`Suite` and `Case` are the suite file's own typed shape (`dqar_bench.config.schema`), so a
suite in code holds exactly what a YAML file may, under the same names, and is validated
by the same reader with the same one-line errors (`dqar_bench.core.errors.SuiteError`).
The frame is the run's table: one row per case, the columns of `results.csv`
(`dqar_bench.views.table.COLUMNS`) after a `model` column. Every record stays in the run
directory (`frame.attrs["run_dir"]`; read it with `dqar_bench.measure.records.RunDir`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dqar_bench.config.schema import SuiteSpec
from dqar_bench.config.suite import Suite as ValidatedSuite
from dqar_bench.config.suite import load_suites, suites_from_spec
from dqar_bench.core.errors import DqarError
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.runs.runner import run_suite
from dqar_bench.views.table import results_frame


def run(
    suite: SuiteSpec | ValidatedSuite | str | Path,
    output: str | Path | None = None,
    *,
    resume: bool = False,
    rerun_changed: bool = False,
    registry: Registry | None = None,
    inception_weights: str | None = None,
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run every case of `suite` (a `Suite` written in code, a suite file's path, or an
    already validated suite) and return its table as a DataFrame.

    `output` is the run directory (default `results/runs/<suite>-<time>/`), as `run -o`;
    `resume` and `rerun_changed` are `run --resume DIR` and `--rerun-changed`. A suite of
    several models runs one suite per model into `<output>/<model>/`, and the frames are
    stacked. `progress` receives each line the command would print (`lambda _: None` for
    silence). A bad suite raises `SuiteError` before anything runs.
    """
    registry = registry or get_registry()
    suites = _validated(suite, registry, inception_weights)
    if resume and output is None:
        raise DqarError("resume=True continues a run directory: give it as output")
    frames = []
    for one in suites:
        where = Path(output) / one.model if output is not None and len(suites) > 1 else output
        run_dir = run_suite(one, where, resume=resume, rerun_changed=rerun_changed, registry=registry, progress=progress)
        assert run_dir is not None  # a plain process is rank 0
        names = {c.name for c in one.cases}
        frame = results_frame([r for r in run_dir.records() if r.case in names], one.baseline)
        frame.insert(0, "model", one.model)
        frame.attrs["run_dir"] = str(run_dir.path)
        frames.append(frame)
    if len(frames) == 1:
        return frames[0]
    combined = pd.concat(frames, ignore_index=True)
    combined.attrs["run_dir"] = [f.attrs["run_dir"] for f in frames]
    return combined


def _validated(suite: SuiteSpec | ValidatedSuite | str | Path, registry: Registry, inception_weights: str | None) -> list[ValidatedSuite]:
    if isinstance(suite, ValidatedSuite):
        return [suite]
    if isinstance(suite, SuiteSpec):
        return suites_from_spec(suite, registry, inception_weights)
    if isinstance(suite, (str, Path)):
        return load_suites(suite, registry, inception_weights)
    raise TypeError(f"run() takes a dqar_bench.Suite, a suite file's path or a validated suite, not {type(suite).__name__}")
