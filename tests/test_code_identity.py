"""Identity that sees code: an edit to a part's code (a built-in's, whose version never
moves, or a plugin of no installed distribution) changes what its case is, so `--resume`
reruns that case alone and `compare --strict` names it; records written before code
digests (the committed CI reference) still compare clean."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.config import code_hash
from dqar_bench.config.identity import CODE_FIELD, case_identity
from dqar_bench.config.suite import load_suite
from dqar_bench.core.plugins import load_registry
from dqar_bench.measure.records import RunDir
from dqar_bench.views.compare import compare_runs
from tests.conftest import SMALL_SUITE_HEAD
from tests.test_resume import CASES, one_line, prepared

REFERENCE = Path(__file__).resolve().parent / "data" / "ci-reference-v1"  # the CI reference as committed before code digests (and record schemas)


@pytest.fixture(autouse=True)
def fresh_reads():
    """Each test reads sources afresh (the digests are cached per process)."""
    code_hash.clear_caches()
    yield
    code_hash.clear_caches()


def edit_module(monkeypatch, module: str, addition: bytes) -> None:
    """As if `module`'s file had been edited on disk: the digest reads the new bytes."""
    real = code_hash.module_source
    monkeypatch.setattr(code_hash, "module_source", lambda name: (real(name) or b"") + addition if name == module else real(name))


def test_a_built_in_part_carries_a_digest_of_its_code_and_the_project_modules_it_imports():
    registry = load_registry(autoload=False)
    interval = registry.get("gate", "interval").cls
    closure = code_hash.module_closure(interval.__module__, "dqar_bench")
    assert closure is not None and interval.__module__ in closure
    assert "dqar_bench.core.parts" in closure  # through `from dqar_bench import StaticGate`: the base class it runs
    assert all(name.startswith("dqar_bench") for name in closure)
    assert "dqar_bench.runs.runner" not in closure  # the harness is dqar-bench's version, not the part's code
    digest = code_hash.code_digest(interval)
    assert digest is not None and len(digest) == code_hash.DIGEST_CHARS
    assert code_hash.code_digest(registry.get("gate", "never").cls) != digest


def test_an_edit_to_a_built_in_gate_reruns_just_its_case_and_strict_compare_names_it(write_suite, tmp_path, capsys, monkeypatch):
    body = SMALL_SUITE_HEAD + CASES + "  - name: other\n    gate: never\n"
    path = write_suite(body)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    before = RunDir(out).latest()
    assert before["iv"].identity["parts"]["gate"][CODE_FIELD]
    shutil.copytree(out, tmp_path / "before")
    capsys.readouterr()

    edit_module(monkeypatch, "dqar_bench.strategies.gates.interval", b"\n# an edit to the gate's code\n")
    assert main(["run", str(path), "--resume", str(out)]) == 2
    err = one_line(capsys)
    assert "differs from the recorded run in 1 case(s): iv (parts.gate.code)" in err

    ran = prepared(monkeypatch)
    assert main(["run", str(path), "--resume", str(out), "--rerun-changed"]) == 0
    assert ran == ["baseline (partner)", "iv"]  # only the edited gate's case (its baseline is timed beside it, for pairing)
    after = RunDir(out).latest()
    assert after["iv"].case_key != before["iv"].case_key
    assert after["other"].case_key == before["other"].case_key
    old_code = before["iv"].identity["parts"]["gate"][CODE_FIELD]
    new_code = after["iv"].identity["parts"]["gate"][CODE_FIELD]
    assert new_code != old_code

    capsys.readouterr()
    loose = ["--max-slowdown", "1000%"]  # timings on a shared CPU are not what this test is about
    assert main(["compare", str(tmp_path / "before"), str(out), *loose]) == 0  # not strict: shown, not failed
    shown = capsys.readouterr().out
    assert f"- iv: gate code: {old_code} -> {new_code}" in shown and "- other:" not in shown
    assert main(["compare", str(tmp_path / "before"), str(out), "--strict", *loose]) == 1
    strict = capsys.readouterr().out
    assert "what the case is changed (--strict): gate code:" in strict and "**1 regression(s)**: iv" in strict


def test_a_plugin_of_no_distribution_is_known_by_its_code(tmp_path, write_suite, monkeypatch):
    """A plugin module in a folder (registered in code, no install metadata): its digest
    follows its file on disk, and an edit changes that part's identity alone."""
    module = tmp_path / "src" / "code_identity_gate.py"
    module.parent.mkdir()
    source = (
        "from dataclasses import dataclass\n"
        "from dqar_bench import StaticGate, hookimpl\nimport torch\n\n"
        "@dataclass\nclass Odd(StaticGate):\n    \"\"\"Reuse on odd steps.\"\"\"\n    PLUGIN_NAME = 'code-odd'\n\n"
        "    def pattern(self, num_steps, num_blocks):\n"
        "        return (torch.arange(num_steps) % 2 == 1)[:, None].expand(num_steps, num_blocks).clone()\n\n"
        "@hookimpl\ndef register_gates():\n    return [Odd]\n"
    )
    module.write_text(source)
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.delitem(sys.modules, "code_identity_gate", raising=False)
    plugin = importlib.import_module("code_identity_gate")
    registry = load_registry(autoload=False, extra_plugins=(plugin,))
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: odd\n    gate: code-odd\n"), registry)
    first = case_identity(suite, suite.case("odd"), registry, "cpu")["parts"]
    assert first["gate"]["version"] is None and first["gate"][CODE_FIELD]

    module.write_text(source.replace("% 2 == 1", "% 3 == 1"))
    code_hash.clear_caches()
    second = case_identity(suite, suite.case("odd"), registry, "cpu")["parts"]
    assert second["gate"][CODE_FIELD] != first["gate"][CODE_FIELD]
    assert {k: v for k, v in second.items() if k != "gate"} == {k: v for k, v in first.items() if k != "gate"}


@pytest.mark.parametrize("model", ["digits-dit", "digits-flow"])
def test_records_from_before_code_digests_compare_clean_with_a_note(model, tmp_path):
    """The old CI reference (tests/data) holds no digests; a run of today's code does. Their code
    is unknown on one side, which is no change: not listed, no --strict failure, one note."""
    reference = REFERENCE / model
    records = [json.loads(line) for line in (reference / "records.jsonl").read_text().splitlines() if line.strip()]
    assert not any(CODE_FIELD in part for r in records for part in (r.get("identity") or {}).get("parts", {}).values())
    for record in records:
        for part in (record.get("identity") or {}).get("parts", {}).values():
            part[CODE_FIELD] = "0123456789abcdef"
    new = tmp_path / "new"
    shutil.copytree(reference, new)
    (new / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for strict in (False, True):
        comparison = compare_runs(reference, new, strict=strict)
        assert all(not change.identity for change in comparison.changes)
        assert not any("--strict" in r for change in comparison.changes for r in change.regressions)
    assert any("part code digests are recorded in one run only" in note for note in comparison.notes)
