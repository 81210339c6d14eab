"""The suite file's typed shape: `dqar-bench schema` prints a JSON Schema that every shipped
suite meets and that refuses what the reader refuses, and a validated suite keeps its file
as the typed, nested model."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from dqar_bench.cli import main
from dqar_bench.config.schema import CaseSpec, SuiteSpec, keys
from dqar_bench.config.suite import CASE_KEYS, TOP_KEYS, load_suite
from tests.conftest import SMALL_SUITE_HEAD

SUITES = sorted((Path(__file__).resolve().parent.parent / "suites").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["schema"]) == 0
    schema = json.loads(out.getvalue())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_shipped_suite_meets_the_schema(validator, path):
    """Each YAML document of the file (editors check each against the schema on its own)."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for d in documents for e in validator.iter_errors(d)]
    assert documents and not errors


@pytest.mark.parametrize("edit", [
    {"timing": {"warmup": 0, "repeat": 1}},  # a misspelled key
    {"sampler": {"steps": "six"}},
    {"dtype": "float64"},
    {"cases": [{"name": "baseline"}, {"name": "x", "gate": "no-such-gate"}]},  # the installed parts are named
    {"cases": [{"name": "baseline"}, {"name": "x", "gate": {"every": 2}}]},  # a part mapping needs its name
    {"cases": []},
])
def test_the_schema_refuses_what_the_reader_refuses(validator, edit, write_suite, capsys):
    data = {**yaml.safe_load(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n"), **edit}
    assert list(validator.iter_errors(data))
    assert main(["validate", str(write_suite(yaml.safe_dump(data)))]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_reader_allows_the_keys_the_schema_names(validator):
    assert TOP_KEYS == keys(SuiteSpec) and set(TOP_KEYS) == set(validator.schema["properties"])
    assert CASE_KEYS == keys(CaseSpec) and "diffusers-hook" in validator.schema["$defs"]["CaseSpec"]["properties"]


def test_a_validated_suite_keeps_its_file_typed_and_nested(write_suite):
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: iv\n    gate: {name: interval, every: 2}\n"))
    assert suite.spec is not None
    assert suite.spec.sampler.steps == suite.steps == 6 and suite.spec.timing.repeats == suite.repeats == 1
    assert suite.spec.timing.order == suite.timing_order  # a default, from one definition
    gate = suite.spec.cases[1].gate
    assert gate.name == "interval" and gate.model_extra == {"every": 2}
