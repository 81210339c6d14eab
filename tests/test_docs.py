"""docs/writing-parts.md is true: its examples run, register and pass the conformance checks."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from dqar_bench.testing import check_part

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-parts.md"


def doc_plugin() -> types.ModuleType:
    """Every python block of the page that defines parts, run as one plugin module."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    module = types.ModuleType("writing_parts_examples")
    sys.modules[module.__name__] = module  # dataclasses and type hints look their module up
    for block in blocks:
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
    from dqar_bench.core.plugins import load_registry
    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.errors import SuiteError

    path = write_suite("name: s\nmodel: dit-tiny\ncases:\n  - name: baseline\n  - name: mine\n    scheduler: {name: second-half, start: 1.5}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, load_registry(autoload=False, extra_plugins=(PLUGIN,)))
    documented = "case 'mine': field 'scheduler' (second-half): parameter 'start' must be in [0, 1], got 1.5"
    assert str(err.value) == f"{path}: {documented}" and documented in DOC.read_text()
