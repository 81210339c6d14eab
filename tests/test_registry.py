"""The plugin registry: built-ins, entry points, and every way a plugin can be wrong."""

from __future__ import annotations

import textwrap

import pytest

from dqar_bench.core.errors import PluginError
from dqar_bench.core.plugins import BUILTIN_DISTRIBUTION, load_registry
from tests.conftest import EXAMPLE_PLUGIN, SMALL_SUITE_HEAD


def test_builtins_are_registered_with_their_metadata(registry):
    assert {"never", "interval"} <= set(registry.names("gate"))
    assert "attention-output" in registry.names("cache")
    assert "none" in registry.names("quantizer")
    assert "all" in registry.names("scheduler")
    info = registry.get("gate", "interval")
    assert info.distribution == BUILTIN_DISTRIBUTION
    assert info.cls.describe().startswith("Compute every N-th step")
    every, anchor = info.cls.parameters()
    assert (every.name, every.type_name, every.default) == ("every", "int", 2)
    assert (anchor.name, anchor.type_name, anchor.default) == ("anchor", "'start' | 'end'", "start")


def test_entry_point_plugin_is_found_and_attributed(fake_distribution):
    fake_distribution("dqar-bench-every-other", {"every_other": "dqar_bench_every_other"}, EXAMPLE_PLUGIN, "0.1.0")
    registry = load_registry(autoload=True)
    info = registry.get("gate", "every-other")
    assert "dqar-bench-every-other 0.1.0" in info.distribution
    assert registry.problems == []


def test_autoload_can_be_switched_off_by_environment(fake_distribution, monkeypatch):
    fake_distribution("dqar-bench-every-other", {"every_other": "dqar_bench_every_other"}, EXAMPLE_PLUGIN)
    monkeypatch.setenv("DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "every-other" not in load_registry().names("gate")
    monkeypatch.setenv("DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "every-other" in load_registry().names("gate")


def _plugin_module(tmp_path, name: str, body: str):
    folder = tmp_path / f"mods-{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder


def test_broken_plugin_is_reported_and_others_still_work(tmp_path, fake_distribution):
    broken = _plugin_module(tmp_path, "broken_plugin", "raise ImportError('no module named missing_dep')\n")
    fake_distribution("broken-dist", {"broken": "broken_plugin"}, broken)
    fake_distribution("dqar-bench-every-other", {"every_other": "dqar_bench_every_other"}, EXAMPLE_PLUGIN)
    registry = load_registry(autoload=True)
    assert "every-other" in registry.names("gate")
    [problem] = registry.problems
    assert "'broken'" in problem and "broken-dist" in problem and "missing_dep" in problem


def test_duplicate_name_from_third_party_is_reported_and_builtin_kept(tmp_path, fake_distribution):
    dup = _plugin_module(
        tmp_path,
        "dup_plugin",
        """
        from dataclasses import dataclass
        from dqar_bench import Gate, hookimpl

        @dataclass
        class Mine(Gate):
            '''Pretends to be interval.'''
            PLUGIN_NAME = "interval"

        @hookimpl
        def register_gates():
            return [Mine]
        """,
    )
    fake_distribution("dup-dist", {"dup": "dup_plugin"}, dup)
    registry = load_registry(autoload=True)
    assert registry.get("gate", "interval").distribution == BUILTIN_DISTRIBUTION
    [problem] = registry.problems
    assert "'interval'" in problem and "dup-dist" in problem and "already taken" in problem


def test_class_without_name_or_of_wrong_kind_is_reported(tmp_path, fake_distribution):
    bad = _plugin_module(
        tmp_path,
        "bad_plugin",
        """
        from dqar_bench import Gate, hookimpl

        class Nameless(Gate):
            '''No PLUGIN_NAME.'''

        @hookimpl
        def register_gates():
            return [Nameless]

        @hookimpl
        def register_caches():
            return [int]
        """,
    )
    fake_distribution("bad-dist", {"bad": "bad_plugin"}, bad)
    problems = load_registry(autoload=True).problems
    assert any("Nameless has no PLUGIN_NAME" in p and "bad-dist" in p for p in problems)
    assert any("must return subclasses of Cache" in p for p in problems)


def test_builtin_fault_is_an_error_not_a_warning(tmp_path, monkeypatch):
    folder = _plugin_module(
        tmp_path,
        "builtin_dup",
        """
        from dqar_bench import Gate, hookimpl

        class Again(Gate):
            '''Duplicate built-in.'''
            PLUGIN_NAME = "never"

        @hookimpl
        def register_gates():
            return [Again]
        """,
    )
    monkeypatch.syspath_prepend(str(folder))
    import dqar_bench.core.plugins as plugins

    original = plugins.builtin_modules()
    monkeypatch.setattr(plugins, "builtin_modules", lambda: original + ["builtin_dup"])
    with pytest.raises(PluginError, match="'never'.*already taken"):
        load_registry(autoload=False)


@pytest.mark.slow
def test_entry_point_part_runs_in_a_suite(fake_distribution, write_suite, tmp_path, monkeypatch):
    fake_distribution("dqar-bench-every-other", {"every_other": "dqar_bench_every_other"}, EXAMPLE_PLUGIN)
    monkeypatch.setenv("DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD", "0")
    from dqar_bench.core.plugins import get_registry

    get_registry.cache_clear()
    try:
        path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: odd\n    gate: every-other\n")
        from dqar_bench.cli import main

        assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    finally:
        get_registry.cache_clear()
    from dqar_bench.measure.records import RunDir

    odd = RunDir(tmp_path / "run").finished()["odd"]
    assert odd.parts["gate"]["name"] == "every-other"
    assert odd.reuse_ratio == pytest.approx(3 / 6)  # steps 1, 3, 5 of 6 reuse every block


def test_a_misspelled_hook_is_a_plugin_problem_not_silence(tmp_path, fake_distribution):
    typo = _plugin_module(
        tmp_path,
        "typo_plugin",
        """
        from dqar_bench import Gate, hookimpl

        class Sometimes(Gate):
            '''Never registered: the hook below is misspelled.'''
            PLUGIN_NAME = "sometimes"

        @hookimpl
        def register_gate():
            return [Sometimes]
        """,
    )
    fake_distribution("typo-dist", {"typo": "typo_plugin"}, typo)
    fake_distribution("dqar-bench-every-other", {"every_other": "dqar_bench_every_other"}, EXAMPLE_PLUGIN)
    registry = load_registry(autoload=True)
    [problem] = registry.problems
    assert "'typo'" in problem and "typo-dist" in problem and "unknown hook(s) 'register_gate' (did you mean 'register_gates'?)" in problem
    assert "sometimes" not in registry.names("gate") and "every-other" in registry.names("gate")  # the others still work


def test_a_misspelled_hook_in_a_builtin_is_an_error(tmp_path, monkeypatch):
    folder = _plugin_module(tmp_path, "builtin_typo", "from dqar_bench import hookimpl\n\n@hookimpl\ndef register_cache():\n    return []\n")
    monkeypatch.syspath_prepend(str(folder))
    import dqar_bench.core.plugins as plugins

    original = plugins.builtin_modules()
    monkeypatch.setattr(plugins, "builtin_modules", lambda: original + ["builtin_typo"])
    with pytest.raises(PluginError, match="unknown hook.*'register_cache' \\(did you mean 'register_caches'\\?\\)"):
        load_registry(autoload=False)


def test_a_part_of_a_plugin_that_failed_to_load_says_so(tmp_path, fake_distribution, write_suite):
    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.errors import SuiteError

    broken = _plugin_module(tmp_path, "broken_plugin2", "raise ImportError('no module named missing_dep')\n")
    fake_distribution("dqar-bench-every-other", {"every_other": "broken_plugin2"}, broken)
    registry = load_registry(autoload=True)
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: odd\n    gate: every-other\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, registry)
    message = str(err.value)
    assert "\n" not in message and "gate 'every-other' is not installed, and plugins failed to load" in message
    assert "plugin 'every_other'" in message and "failed to load: ImportError: no module named missing_dep" in message
    assert "unknown gate" not in message
