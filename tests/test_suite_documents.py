"""A suite file of several YAML documents: one suite per document, each with its own
settings (another model, sampler and thresholds), its own text kept by its run, and
models that differ, since a run of several writes one folder per model."""

from __future__ import annotations

import yaml

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suites

DIT = """\
# the epsilon model
name: two-dit
model: dit-tiny
sampler: {name: ddim, steps: 6, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
baseline: baseline
cases:
  - name: baseline
  - {name: gate, gate: {name: interval, every: 2}, cache: attention-output}
"""

FLOW = """\
# the flow model, with its own sampler and gate
name: two-flow
model: digits-flow
sampler: {name: flow-euler, steps: 5, guidance_scale: 1.5}
class_labels: [3]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
baseline: baseline
cases:
  - name: baseline
  - {name: gate, gate: {name: interval, every: 3}, cache: block-residual}
"""


def test_each_document_is_a_suite_with_its_own_settings_and_text(write_suite, registry):
    path = write_suite(DIT + "---\n" + FLOW)
    dit, flow = load_suites(path, registry)
    assert (dit.name, dit.model, dit.sampler, dit.steps) == ("two-dit", "dit-tiny", "ddim", 6)
    assert (flow.name, flow.model, flow.sampler, flow.steps) == ("two-flow", "digits-flow", "flow-euler", 5)
    assert flow.case("gate").parts["gate"].params["every"] == 3 and dit.case("gate").parts["gate"].params["every"] == 2
    assert flow.case("gate").parts["cache"].name == "block-residual"
    # each run keeps its own document: the same data again, and a digest of its own
    assert yaml.safe_load(dit.text) == yaml.safe_load(DIT) and yaml.safe_load(flow.text) == yaml.safe_load(FLOW)
    assert "# the flow model" in flow.text and "two-dit" not in flow.text
    assert dit.content_hash != flow.content_hash


def test_a_one_document_file_keeps_its_whole_text(write_suite, registry):
    path = write_suite("---\n" + DIT)
    (suite,) = load_suites(path, registry)
    assert suite.text == path.read_text()


def test_two_documents_of_one_model_are_refused_in_one_line(write_suite, capsys):
    path = write_suite(DIT + "---\n" + DIT.replace("two-dit", "again"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "model 'dit-tiny' has 2 suites" in err


def test_plan_prints_each_documents_plan(write_suite, capsys):
    path = write_suite(DIT + "---\n" + FLOW)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "suite 'two-dit', model dit-tiny" in out and "suite 'two-flow', model digits-flow" in out
    assert "| gate | interval(every=2) / attention-output" in out and "| gate | interval(every=3) / block-residual" in out
