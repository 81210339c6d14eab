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
from dqar_bench.views.report import figures, reuse, samples, summary, tune
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
    """Write one HTML report of the runs (one run, or several compared) and of the `dqar-bench
    tune` folders among the paths (`tune.split_paths`); return its path.

    `output` defaults to `report.html` in the directory given (one) or in the current
    directory (several).
    """
    run_paths, tune_paths = tune.split_paths(list(run_dirs))
    runs = load_runs(run_paths, cases) if run_paths else []
    tunes = [tune.load_tune(p) for p in tune_paths]
    path = Path(output) if output else (Path(run_dirs[0]) if len(run_dirs) == 1 else Path(".")) / "report.html"
    page = render(runs, max_seeds, tunes)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, page)


def render(runs: list[Run], max_seeds: int = 4, tunes: list[tune.Tune] | None = None) -> str:
    """The page: the runs' sections, then a Pareto-front section per tune folder (a page of tune folders alone has only those)."""
    template = Template(resources.files("dqar_bench.views.report").joinpath("template.html").read_text(encoding="utf-8"))
    tunes = tunes or []
    sections = _run_sections(runs, max_seeds) if runs else []
    for number, one in enumerate(tunes, 1):
        suffix = f" {number}" if len(tunes) > 1 else ""
        sections.insert(len(sections) - bool(runs), (f"tune{suffix.strip()}", f"Pareto front{suffix}", f"Pareto front: {one.title}", tune.section(one)))
    if runs:
        first = runs[0].first
        suite = first.suite or runs[0].label
        several = len(runs) > 1
        heading = f"dqar-bench report <span>{esc(suite)}</span>" if not several else f"dqar-bench report <span>{len(runs)} runs compared</span>"
        title = f"dqar-bench: {suite}" if not several else "dqar-bench: " + ", ".join(r.label for r in runs)
        subtitle, facts = _subtitle(runs), _facts(runs)
    else:
        names = ", ".join(t.title for t in tunes)
        heading = f"dqar-bench tune <span>{esc(names)}</span>"
        title, subtitle, facts = f"dqar-bench tune: {names}", "Tune folder " + ", ".join(str(t.path) for t in tunes), _tune_facts(tunes)
    paths = [str(r.path) for r in runs] + [str(t.path) for t in tunes]
    return template.substitute(
        version=esc(__version__),
        title=esc(title),
        heading=heading,
        subtitle=esc(subtitle),
        facts=facts,
        nav="".join(f'<a href="#{key}">{esc(short)}</a>' for key, short, _, _ in sections),
        sections="\n".join(f'<section id="{key}"><h2>{esc(head)}</h2>\n{body}\n</section>' for key, _, head, body in sections),
        footer=esc(f"Written by dqar-bench {__version__} on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from "
                   + ", ".join(paths) + ". Rebuild with: dqar-bench report " + " ".join(paths)),
    )


def _run_sections(runs: list[Run], max_seeds: int) -> list[tuple[str, str, str, str]]:
    """(id, name in the navigation bar, heading, body) of each section of the runs, in page order."""
    return [
        ("summary", "Summary", "Summary", summary.section(runs) + "\n" + _table_notes(runs)),
        ("images", "Images", "Images side by side", samples.section(runs, max_seeds)),
        ("reuse", "Reuse maps", "Reuse maps", reuse.section(runs)),
        ("steps", "Step times", "Step times", figures.timeline_section(runs)),
        ("pareto", "Speed vs quality", "Speed against quality", figures.pareto_section(runs)),
        ("environment", "Environment", "Environment", _environment(runs)),
    ]


def _tune_facts(tunes: list[tune.Tune]) -> str:
    one = tunes[0].meta
    items = [("objective", one.get("objective")), ("quality", one.get("quality")),
             ("trials", ", ".join(str(len(t.rows)) for t in tunes)), ("seeds", ", ".join(map(str, one["seeds"])))]
    return "".join(f"<li><b>{esc(k)}</b>{esc(v)}</li>" for k, v in items if v not in (None, ""))


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
