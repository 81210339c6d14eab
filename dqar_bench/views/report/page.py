"""The report page: the sections put into the template shipped with the package.

One self-contained HTML file: pictures and plots are embedded PNGs, the styles and the small
sort script are inline, and nothing is fetched, so the file can be mailed, attached to a CI
job, or opened offline.
"""

from __future__ import annotations

import datetime as _dt
from importlib import resources
from pathlib import Path
from string import Template

from dqar_bench import __version__
from dqar_bench.core.files import write_atomic
from dqar_bench.measure.stats import NOISY, SPEEDUP_METHOD, UNRELIABLE
from dqar_bench.views.report import figures, reuse, samples, summary
from dqar_bench.views.report.markup import esc
from dqar_bench.views.report.runs import Run, load_runs

ENVIRONMENT = [
    # record environment key, label
    ("device", "device"), ("gpu", "GPU"), ("driver", "driver"), ("cuda", "CUDA"), ("cudnn", "cuDNN"),
    ("cpu", "CPU"), ("cpu_count", "CPU cores"), ("torch_threads", "torch threads"), ("torch", "torch"),
    ("diffusers", "diffusers"), ("torch_fidelity", "torch-fidelity"), ("python", "Python"), ("platform", "platform"),
    ("dqar_bench", "dqar-bench"), ("git_commit", "git commit"), ("dtype", "dtype"),
    ("attention_backend", "attention"), ("suite_hash", "suite hash"),
]

GPU_ONLY = {"gpu", "driver", "cuda", "cudnn"}
"""Environment rows shown only for a run on a CUDA device."""


def write_report(run_dirs: list[str | Path], output: str | Path | None = None, max_seeds: int = 4, cases: set[str] | None = None) -> Path:
    """Write one HTML report of the runs (one run, or several compared); return its path.

    `output` defaults to `report.html` in the run directory (one run) or in the current
    directory (several runs).
    """
    runs = load_runs(list(run_dirs), cases)
    path = Path(output) if output else (runs[0].path if len(runs) == 1 else Path(".")) / "report.html"
    page = render(runs, max_seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, page)


def render(runs: list[Run], max_seeds: int = 4) -> str:
    template = Template(resources.files("dqar_bench.views.report").joinpath("template.html").read_text(encoding="utf-8"))
    first = runs[0].first
    suite = first.suite or runs[0].label
    several = len(runs) > 1
    heading = f"dqar-bench report <span>{esc(suite)}</span>" if not several else f"dqar-bench report <span>{len(runs)} runs compared</span>"
    return template.substitute(
        version=esc(__version__),
        title=esc(f"dqar-bench: {suite}" if not several else "dqar-bench: " + ", ".join(r.label for r in runs)),
        heading=heading,
        subtitle=esc(_subtitle(runs)),
        facts=_facts(runs),
        summary=summary.section(runs),
        table_notes=_table_notes(runs),
        images=samples.section(runs, max_seeds),
        reuse=reuse.section(runs),
        steps=figures.timeline_section(runs),
        pareto=figures.pareto_section(runs),
        environment=_environment(runs),
        footer=esc(f"Written by dqar-bench {__version__} on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from "
                   + ", ".join(str(r.path) for r in runs) + ". Rebuild with: dqar-bench report "
                   + " ".join(str(r.path) for r in runs)),
    )


def _subtitle(runs: list[Run]) -> str:
    if len(runs) > 1:
        return "Runs: " + "; ".join(f"{r.label} ({r.first.suite})" for r in runs) + ". Each case is compared with the baseline of its own run."
    description = _suite_description(runs[0])
    return description or f"Run directory {runs[0].path}"


def _suite_description(run: Run) -> str:
    """The suite's own description, from the copy kept in the run directory (if readable)."""
    try:
        import yaml

        data = yaml.safe_load((run.path / "suite.yaml").read_text(encoding="utf-8"))
        return str(data.get("description") or "") if isinstance(data, dict) else ""
    except Exception:  # noqa: BLE001 - a missing or odd suite copy costs one line of text
        return ""


def _facts(runs: list[Run]) -> str:
    """One run: its facts in a row. Several: one card per run, side by side, each with its own model, sampler and steps."""
    if len(runs) == 1:
        return "".join(f"<li><b>{esc(k)}</b>{esc(v)}</li>" for k, v in _run_facts(runs[0], [e.status for e in runs[0].entries]))
    cards = []
    for run in runs:
        items = "".join(f"<li><b>{esc(k)}</b>{esc(v)}</li>" for k, v in _run_facts(run, [e.status for e in run.entries]))
        cards.append(f'<li class="run" data-run="{esc(run.label)}"><h4>{esc(run.label)}</h4><ul class="facts">{items}</ul></li>')
    return "".join(cards)


def _run_facts(run: Run, statuses: list[str]) -> list[tuple[str, str]]:
    first = run.first
    steps = first.steps
    items = [
        ("model", first.model),
        ("sampler", f"{first.sampler}, {steps} step{'' if steps == 1 else 's'}"),
        ("guidance", first.guidance_scale),
        ("batch", first.batch),
        ("seeds", ", ".join(str(s) for s in first.seeds or [])),
        ("device", first.device),
        ("dtype", first.dtype),
        ("cases", f"{statuses.count('ok')} ok"
                  + (f", {statuses.count('failed')} failed" if "failed" in statuses else "")
                  + (f", {statuses.count('unsupported')} unsupported" if "unsupported" in statuses else "")),
        ("started", (first.started or "").replace("T", " ").split("+")[0]),
    ]
    return [(k, str(v)) for k, v in items if v not in (None, "")]


def _table_notes(runs: list[Run]) -> str:
    """The speedup method as the rows were computed (per-round ratios where the records have rounds)."""
    methods = sorted({m for run in runs for m in run.frame.get("speedup_method", []) if isinstance(m, str) and m}) or [SPEEDUP_METHOD]
    return (
        f'<p class="note">Speedup: {esc("; ".join(methods))}. Noise: IQR / median of the timed calls over {NOISY:.0%} '
        f"is noisy, over {UNRELIABLE:.0%} unreliable. The full tables are in <code>table.md</code> and "
        "<code>results.csv</code> of the run directory.</p>"
    )


def _environment(runs: list[Run]) -> str:
    envs = [r.environment for r in runs]
    head = "".join(f"<th>{esc(r.label)}</th>" for r in runs) if len(runs) > 1 else ""
    rows = []
    on_gpu = [str(r.first.device or env.get("device") or "").startswith("cuda") for r, env in zip(runs, envs)]
    for key, label in ENVIRONMENT:
        values = [env.get(key) for env in envs]
        if key in GPU_ONLY:  # the installed CUDA says nothing about a run on the CPU
            values = [v if gpu else None for v, gpu in zip(values, on_gpu)]
        if all(v in (None, "") for v in values):
            continue
        if key == "git_commit":
            values = [f"{v}{' (uncommitted changes)' if env.get('git_dirty') else ''}" if v else None for v, env in zip(values, envs)]
        rows.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc('' if v is None else v)}</td>" for v in values) + "</tr>")
    ends = [(r.first.started, r.records[-1].finished) for r in runs]
    rows.append("<tr><td>run</td>" + "".join(f"<td>{esc(a)} to {esc(b)}</td>" for a, b in ends) + "</tr>")
    thead = f"<thead><tr><th></th>{head}</tr></thead>" if head else ""
    return f'<table class="env">{thead}<tbody>{"".join(rows)}</tbody></table>'
