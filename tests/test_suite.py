"""Suite files: every class of mistake is one line, names file/case/field, exits 2."""

from __future__ import annotations

import pytest

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from tests.conftest import SMALL_SUITE_HEAD


def validate(capsys, path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_valid_suite_with_defaults_and_sweep(write_suite, registry):
    path = write_suite(
        SMALL_SUITE_HEAD
        + """
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
    sweep: {parameter: gate.every, values: [2, 4]}
"""
    )
    suite = load_suite(path, registry)
    assert [c.name for c in suite.cases] == ["baseline", "iv-every-2", "iv-every-4"]
    assert suite.case("baseline").untouched
    swept = suite.case("iv-every-4")
    assert swept.parts["gate"].params == {"every": 4}
    assert swept.parts["cache"].name == "attention-output"  # defaults fill the kinds a case leaves out
    assert suite.ordered_cases()[0].name == "baseline"


@pytest.mark.parametrize(
    "cases, fragments",
    [
        ("  - name: baseline\n  - name: x\n    gate: intervall\n", ["case 'x'", "field 'gate'", "unknown gate 'intervall'", "did you mean 'interval'"]),
        ("  - name: baseline\n  - name: x\n    gate: {name: interval, evry: 2}\n", ["case 'x'", "unknown parameter 'evry'", "every"]),
        ("  - name: baseline\n  - name: x\n    gate: {name: interval, every: two}\n", ["case 'x'", "parameter 'every' must be int", "'two'"]),
        ("  - name: baseline\n  - name: x\n    gate: {name: interval, every: 0}\n", ["case 'x'", "'every' must be >= 1"]),
        ("  - name: baseline\n  - name: baseline\n", ["case 'baseline'", "duplicate case name"]),
        ("  - name: other\n", ["field 'baseline'", "no case named 'baseline'"]),
        ("  - name: baseline\n  - name: x\n    gaet: never\n", ["case 'x'", "unknown field 'gaet'", "did you mean 'gate'"]),
        ("  - name: baseline\n  - name: x\n    gate: never\n    sweep: {parameter: every, values: [1]}\n", ["case 'x'", "sweep.parameter"]),
    ],
)
def test_suite_errors_are_one_line_with_exit_2(write_suite, capsys, cases, fragments):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n" + cases)
    code, err = validate(capsys, path)
    assert code == 2
    assert err.startswith(f"error: {path}:")
    assert "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_yaml_syntax_error_names_the_line(write_suite, capsys):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: [unclosed\n")
    code, err = validate(capsys, path)
    assert code == 2
    assert "YAML syntax error" in err and "line 12" in err


def test_top_level_field_errors(write_suite, capsys):
    path = write_suite(SMALL_SUITE_HEAD.replace("steps: 6", "steps: many") + "cases:\n  - name: baseline\n")
    code, err = validate(capsys, path)
    assert code == 2 and "field 'sampler.steps' must be int" in err
    path = write_suite(SMALL_SUITE_HEAD.replace("name: ddim", "name: ddpm") + "cases:\n  - name: baseline\n")
    code, err = validate(capsys, path)
    assert code == 2 and "unknown sampler 'ddpm'" in err
    path = write_suite("nmae: x\n" + SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n")
    code, err = validate(capsys, path)
    assert code == 2 and "unknown field 'nmae'" in err and "did you mean 'name'" in err


def test_missing_file_is_a_suite_error(tmp_path):
    with pytest.raises(SuiteError, match="cannot read the suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_validate_ok_prints_summary(write_suite, capsys):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: iv\n    gate: interval\n")
    assert main(["validate", str(path)]) == 0
    assert "2 cases" in capsys.readouterr().out


def test_shipped_suites_validate():
    import importlib.util
    from pathlib import Path

    suites = sorted(Path(__file__).resolve().parent.parent.joinpath("suites").glob("*.yaml"))
    assert suites, "the repo ships suites"
    for path in suites:
        if "cache-dit:" in path.read_text() and importlib.util.find_spec("cache_dit") is None:
            assert main(["validate", str(path)]) == 2, path  # one line naming the optional extra
            continue
        assert main(["validate", str(path)]) == 0, path
