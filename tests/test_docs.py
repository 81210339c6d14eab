"""The docs are true: their examples run, their suites validate, their paths and figures exist.

A page's ```` ```python ```` blocks run, in order, in one namespace per page. A block whose
fence carries a title (```` ```python title="needs network access once" ````) is shown and not
run: it needs something a test must not use (the network, a GPU). Figures a page quotes
are checked against the committed run the page names.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import os
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from dqar_bench.testing import check_part

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOC = DOCS / "writing-parts.md"
README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
EXAMPLE = ROOT / "examples" / "dqar-bench-every-other"


def code_blocks(page: Path, language: str) -> list[str]:
    """The page's blocks in `language` with a bare fence: the ones meant to run."""
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def run_blocks(page: Path, blocks: list[str]) -> dict:
    """Run blocks in order, in one namespace, from the repository root (pages name repo paths)."""
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


# --- docs/writing-parts.md: its parts register and conform ---------------------------


def doc_plugin() -> types.ModuleType:
    """Every python block of the page that defines parts, run as one plugin module."""
    module = types.ModuleType("writing_parts_examples")
    sys.modules[module.__name__] = module  # dataclasses and type hints look their module up
    for block in code_blocks(DOC, "python"):
        if "import my_plugin" in block:  # the page's own test example, for a plugin of the reader's
            continue
        exec(compile(block, str(DOC), "exec"), module.__dict__)
    return module


PLUGIN = doc_plugin()
PARTS = ["SecondHalf", "EveryThird", "SnrFloor", "LastOutput", "BlockDelta", "BFloat16"]


@pytest.mark.parametrize("name", PARTS)
def test_every_example_on_the_page_conforms(name):
    results = check_part(getattr(PLUGIN, name), plugins=(PLUGIN,), models=("dit-tiny",))
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)


def test_the_page_registers_every_example():
    from dqar_bench.core.plugins import load_registry

    registry = load_registry(autoload=False, extra_plugins=(PLUGIN,))
    names = {kind: set(parts) for kind, parts in registry.parts.items()}
    assert {"second-half"} <= names["scheduler"] and {"every-third", "snr-floor"} <= names["gate"]
    assert {"last-output", "my-block-residual"} <= names["cache"] and "bf16" in names["quantizer"]


def test_the_documented_range_error_is_what_a_user_sees(write_suite, capsys):
    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.errors import SuiteError
    from dqar_bench.core.plugins import load_registry

    path = write_suite("name: s\nmodel: dit-tiny\ncases:\n  - name: baseline\n  - name: mine\n    scheduler: {name: second-half, start: 1.5}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, load_registry(autoload=False, extra_plugins=(PLUGIN,)))
    documented = "case 'mine': field 'scheduler' (second-half): parameter 'start' must be in [0, 1], got 1.5"
    assert str(err.value) == f"{path}: {documented}" and documented in DOC.read_text()


# --- runnable examples of the other pages ---------------------------------------------


def test_the_python_api_page_runs():
    namespace = run_blocks(DOCS / "api.md", code_blocks(DOCS / "api.md", "python"))
    assert Path(namespace["frame"].attrs["run_dir"]).is_dir() and len(namespace["frame"]) == 2


def test_the_own_model_page_saves_a_pipeline_folder_and_runs_it():
    page = DOCS / "own-model.md"
    assert 'title="needs network access once"' in page.read_text()  # the download, shown, not run
    namespace = run_blocks(page, code_blocks(page, "python"))
    assert (namespace["folder"] / "my-dit" / "model_index.json").is_file()


def test_the_family_entry_on_the_models_page_is_the_one_in_the_code():
    from dqar_bench.model import families

    namespace = run_blocks(DOCS / "models.md", code_blocks(DOCS / "models.md", "python"))
    assert namespace["flux"] == families.get("flux")


def test_the_parts_page_shows_the_example_plugin_as_it_is():
    page = DOCS / "parts.md"
    plugin, test = code_blocks(page, "python")
    source = (EXAMPLE / "dqar_bench_every_other" / "__init__.py").read_text()
    code_of = lambda text: [ast.dump(node) for node in ast.parse(text).body[-4:]]  # noqa: E731 - two imports, the class, the hook
    assert code_of(plugin) == code_of(source)
    entry = code_blocks(page, "toml")[0]
    assert entry.strip() in (EXAMPLE / "pyproject.toml").read_text()
    shown = [line.split("#")[0].strip() for line in test.splitlines() if "assert_conforms(" in line]
    assert shown and all(call in (EXAMPLE / "tests" / "test_every_other.py").read_text() for call in shown)
    module = types.ModuleType("parts_page_example")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(plugin, str(page), "exec"), module.__dict__)
    failed = [r.line() for r in check_part(module.EveryOther, plugins=(module,), models=("dit-tiny",)) if not r.ok]
    assert not failed, "\n".join(failed)


def test_the_parts_page_lists_every_built_in_part():
    from dqar_bench.core.plugins import load_registry

    rows = dict(re.findall(r"^\| (scheduler|gate|cache|quantizer) \|[^|]*\|([^\n]*)\|$", (DOCS / "parts.md").read_text(), flags=re.M))
    registry = load_registry(autoload=False)
    for kind, names in rows.items():
        assert set(re.findall(r"`([\w-]+)`", names)) == set(registry.parts[kind]), kind
    assert set(rows) == {"scheduler", "gate", "cache", "quantizer"}


@pytest.mark.parametrize("page", [p for p in PAGES if code_blocks(p, "yaml")] + [README], ids=lambda p: p.name)
def test_every_suite_on_a_page_validates(page, tmp_path):
    """A YAML block with `cases` is a suite and must validate as `dqar-bench validate` would;
    files the reader supplies (`/path/to/...`) are left out, the rest is checked as written."""
    from dqar_bench.config.suite import load_suites

    suites = [yaml.safe_load(b) for b in code_blocks(page, "yaml")]
    suites = [s for s in suites if isinstance(s, dict) and "cases" in s]
    for i, suite in enumerate(suites):
        quality = suite.get("quality") or {}
        suite["quality"] = {k: v for k, v in quality.items() if "/path/to/" not in str(v)}
        path = tmp_path / f"suite-{i}.yaml"
        path.write_text(yaml.safe_dump(suite))
        assert load_suites(path)


# --- paths, figures and commands the pages quote ----------------------------------------

REPO_PATH = re.compile(r"`((?:dqar_bench|tests|suites|scripts|benchmarks|examples|results|prompts|docs)/[\w./*<>-]*)`")


@pytest.mark.parametrize("page", PAGES + [README], ids=lambda p: p.name)
def test_every_repository_path_a_page_names_exists(page):
    missing = []
    for path in set(REPO_PATH.findall(page.read_text())):
        if "<" in path:  # a pattern such as results/runs/<suite>-<time>/
            continue
        if not glob.glob(str(ROOT / path)):
            missing.append(path)
    assert not missing, f"{page.name} names paths that do not exist: {sorted(missing)}"


def test_no_page_cites_a_file_outside_the_repository():
    """ANCHORS.md was the project's notes, never in the repository: a figure names its source inline."""
    texts = [README, *PAGES, *ROOT.glob("suites/*.yaml"), *ROOT.glob("dqar_bench/**/*.py")]
    citing = [str(p.relative_to(ROOT)) for p in texts if "ANCHORS" in p.read_text()]
    assert not citing


def test_the_bootstrap_resamples_the_pages_quote_are_the_codes():
    from dqar_bench.measure.stats import RESAMPLES

    quoted = {int(n) for p in [README, *PAGES] for n in re.findall(r"(\d+) resamples", p.read_text())}
    assert quoted == {RESAMPLES}


def test_the_readme_table_is_the_committed_reference_run():
    """Every figure of the README's table is a cell of the run it names."""
    text = README.read_text()
    source = ROOT / re.search(r"`(results/ci/reference/[\w-]+/table\.md)`", text).group(1)
    committed = source.read_text().replace("%", " %")
    rows = re.findall(r"^\| (\w+) \|(.*)\|$", text, flags=re.M)
    assert len(rows) >= 5
    for case, cells in rows:
        line = " ".join(l for l in committed.splitlines() if l.startswith(f"| {case} |"))  # noqa: E741 - its row in every table
        for cell in cells.split("|"):
            for figure in re.findall(r"\d+\.\d+", cell):
                assert figure in line, f"README: {case} {figure} is not in {source.relative_to(ROOT)}"


def test_the_readme_fits_two_screens_and_names_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert re.search(r"^ +.*dqar-bench run suites/ablations\.yaml$", text, flags=re.M)
    assert re.search(r"^ +python -m pytest$", text, flags=re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^python -m pytest$", ci, flags=re.M), ".ci/run runs the README's test command"


def test_the_readme_links_every_page_and_the_site_builds_them_all():
    text = README.read_text()
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f"docs/{page.name}" in text, f"README does not link {page.name}"
        assert f" {page.name}" in nav, f"mkdocs.yml's nav lacks {page.name}"


def test_every_command_the_overview_lists_exists():
    from dqar_bench import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = set(re.findall(r"^ +dqar-bench ([\w-]+)", (DOCS / "index.md").read_text(), flags=re.M))
    offered = set(re.search(r"\{([\w,-]+)\}", out.getvalue()).group(1).split(","))
    assert listed == offered


def test_the_architecture_page_is_the_import_order():
    """The layers table's order is the one tests/test_layers.py holds the imports to."""
    from tests.test_layers import LAYERS

    layers = re.findall(r"^\| \d+\. [\w ]+ \| `dqar_bench/(\w+)/`", (DOCS / "architecture.md").read_text(), flags=re.M)
    assert layers == LAYERS
