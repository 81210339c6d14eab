"""The typed case record: one shape written, every older line read through `upgrade`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.core.errors import DqarError
from dqar_bench.measure.case_record import SCHEMA_VERSION, CaseRecord, environment_file, upgrade
from dqar_bench.measure.records import RunDir
from dqar_bench.views.table import render_markdown, results_frame

REFERENCE = Path(__file__).resolve().parent / "data" / "ci-reference-v1"
"""The CI reference run as committed before records had a schema (version 1): records,
rounds, tables and environment, without outputs. `results/ci/reference` is rewritten
whenever the reference is regenerated; this copy keeps the old shape the upgrade reads."""
MODELS = ("digits-dit", "digits-flow")


def _lines(model: str) -> list[dict]:
    return [json.loads(line) for line in (REFERENCE / model / "records.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("model", MODELS)
def test_a_version_1_line_is_upgraded_with_nothing_lost(model):
    """The old CI reference is version 1: the case three times, the environment inline."""
    for old in _lines(model):
        assert "schema_version" not in old
        new, environment = upgrade(old)
        assert new["schema_version"] == SCHEMA_VERSION
        assert new["identity"] == old["identity"]  # what the key hashed, kept as it was
        for key in ("model", "sampler", "steps", "guidance_scale", "seeds", "dtype", "execution_mode", "dqar_bench"):
            assert key not in new  # said once: by the identity
        assert environment == old["environment"] and new["environment"] == environment_file(environment)
        record = CaseRecord.from_json(old)
        assert (record.model, record.sampler, record.steps, record.guidance_scale) == (
            old["model"], old["sampler"], old["steps"], old["guidance_scale"])
        assert (record.seeds, record.dtype, record.execution_mode, record.dqar_bench) == (
            old["seeds"], old["dtype"], old["execution_mode"], old["dqar_bench"])
        assert record.parts == old["parts"] and record.extra == {}
        for key in ("case", "case_key", "status", "batch", "device", "latency_s", "round_s", "baseline_round_s", "flops",
                    "quality", "fidelity", "class_accuracy", "reuse_ratio", "memory", "settings"):
            assert getattr(record, key) == old.get(key), key
        assert CaseRecord.from_json(json.loads(json.dumps(record.to_json()))) == record  # the current line reads back as itself


@pytest.mark.parametrize("model", MODELS)
def test_the_reference_run_reads_to_the_same_table_and_its_environment(model, tmp_path):
    run = RunDir(REFERENCE / model)
    records = run.records()
    assert [r.case for r in records] == [line["case"] for line in _lines(model)]
    assert run.environment_of(records[0]) == _lines(model)[0]["environment"]
    rows = [line for line in (REFERENCE / model / "table.md").read_text().splitlines() if line.startswith("|")]
    assert [line for line in render_markdown(results_frame(records, "baseline")).splitlines() if line.startswith("|")] == rows  # the notes' wording may move on
    assert not list((REFERENCE / model).glob("environment-*.json"))  # reading writes nothing


def test_a_line_from_before_identity_gets_one_rebuilt_and_marked():
    old = {"case": "x", "status": "ok", "model": "digits-dit", "sampler": "ddim", "steps": 25, "seeds": [0], "dtype": "float32",
           "execution_mode": "eager", "parts": {"gate": {"name": "interval", "params": {"every": 2}}}, "batch": 4}
    record = CaseRecord.from_json(old)
    assert not record.identity_recorded and record.to_json()["identity_recorded"] is False
    assert list(record.identity)[0] == "parts" and record.identity["parts"] == old["parts"]
    assert (record.model, record.steps, record.execution_mode, record.batch) == ("digits-dit", 25, "eager", 4)


def test_unknown_keys_are_kept_and_unknown_fields_refused():
    record = CaseRecord.from_json({"schema_version": SCHEMA_VERSION, "case": "x", "identity": {}, "from_the_future": 1})
    assert record.extra == {"from_the_future": 1} and record.to_json()["from_the_future"] == 1
    with pytest.raises(AttributeError, match="no field 'speed'"):
        record.update(speed=2.0)


def test_a_newer_schema_is_one_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(REFERENCE / "digits-dit", run, ignore=shutil.ignore_patterns("outputs", "*.png", "*.html"))
    (run / "records.jsonl").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "case": "baseline"}) + "\n")
    with pytest.raises(DqarError, match=rf"records.jsonl: case 'baseline': record schema_version {SCHEMA_VERSION + 1} is newer"):
        RunDir(run).records()
    assert main(["compare", str(REFERENCE / "digits-dit"), str(run)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
