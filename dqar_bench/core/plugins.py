"""The registry: turns plugin hooks into named part classes.

Built-in parts (the `dqar_bench.strategies` package) are registered by module path, exactly like a
third-party plugin but without install metadata; third-party parts arrive through the
`dqar_bench` entry-point group (switched off by `DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD=1`).
A third-party plugin that fails to import, implements a hook that does not exist (a
misspelled `register_gate`), returns a class without a name, or reuses a name is reported
in `Registry.problems` and left out; the others keep working. The same
faults in a built-in part are bugs and raise `PluginError` at once.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from dqar_bench.core import hookspecs
from dqar_bench.core.errors import PluginError
from dqar_bench.core.parts import BASES, KINDS, Part

ENTRY_POINT_GROUP = "dqar_bench"
DISABLE_AUTOLOAD_ENV = "DQAR_BENCH_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "dqar-bench (built-in)"

HOOK_OF_KIND = {
    "scheduler": "register_schedulers",
    "gate": "register_gates",
    "cache": "register_caches",
    "quantizer": "register_quantizers",
}


@dataclass(frozen=True)
class PartInfo:
    """A registered part class and where it came from."""

    kind: str
    name: str
    cls: type[Part]
    plugin: str
    distribution: str
    """Where it came from, in words: 'distribution 'NAME VERSION'', BUILTIN_DISTRIBUTION, ..."""
    dist_name: str | None = None
    """The installed distribution's name and version, where an entry point found it (identity reads these)."""
    dist_version: str | None = None


@dataclass
class Registry:
    """Every installed part, by kind and name, and what went wrong while loading plugins."""

    parts: dict[str, dict[str, PartInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[str] = field(default_factory=list)

    def get(self, kind: str, name: str) -> PartInfo:
        return self.parts[kind][name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.parts[kind])


BUILTIN_PACKAGE = "dqar_bench.strategies"


def builtin_modules() -> list[str]:
    """The built-in parts' modules, named by `dqar_bench.strategies` (imported by name: the
    parts stand above this layer, as any plugin does)."""
    return list(importlib.import_module(BUILTIN_PACKAGE).BUILTIN_MODULES)


def load_registry(autoload: bool | None = None, extra_plugins: tuple[object, ...] = ()) -> Registry:
    """Build a fresh registry: built-ins, then entry points (unless disabled), then extras.

    `extra_plugins` are plugin objects (modules or instances) registered directly, as
    tests and embedding code do.
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    origin: dict[str, tuple[str, bool, tuple[str | None, str | None]]] = {}  # plugin name -> (distribution label, builtin, (name, version))

    for module_name in builtin_modules():
        pm.register(importlib.import_module(module_name), name=module_name)
        origin[module_name] = (BUILTIN_DISTRIBUTION, True, (None, None))

    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            found = _distribution(ep)
            dist = _dist_label(*found)
            if pm.get_plugin(ep.name) is not None or ep.name in origin:
                registry.problems.append(f"plugin '{ep.name}' from {dist}: another plugin already uses that name; it was skipped")
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not stop the others
                registry.problems.append(f"plugin '{ep.name}' from {dist} failed to load: {type(exc).__name__}: {exc}")
                continue
            origin[ep.name] = (dist, False, found)

    for plugin in extra_plugins:
        name = pm.register(plugin)
        if name is None:
            raise PluginError(f"plugin {plugin!r} could not be registered (already registered?)")
        origin[name] = ("(registered in code)", False, (None, None))

    _drop_unknown_hooks(pm, registry, origin)

    for kind in KINDS:
        hook = getattr(pm.hook, HOOK_OF_KIND[kind])
        # get_hookimpls() lists plugins in registration order (built-ins first), so a
        # built-in name always wins over a third-party duplicate.
        for impl in hook.get_hookimpls():
            dist, builtin, found = origin.get(impl.plugin_name, ("unknown distribution", False, (None, None)))
            try:
                classes = impl.function() or []
                for cls in classes:
                    _add(registry, kind, cls, impl.plugin_name, dist, found)
            except PluginError as exc:
                if builtin:
                    raise
                registry.problems.append(str(exc))
            except Exception as exc:
                if builtin:
                    raise
                registry.problems.append(
                    f"plugin '{impl.plugin_name}' from {dist} failed in {HOOK_OF_KIND[kind]}: {type(exc).__name__}: {exc}"
                )
    return registry


def _drop_unknown_hooks(pm: pluggy.PluginManager, registry: Registry, origin: dict[str, tuple[str, bool]]) -> None:
    """pluggy's `check_pending`: a hook implementation with no spec (`register_gate` for
    `register_gates`) would otherwise never be called, and its parts would silently be
    missing. Such a plugin is reported and left out whole; in a built-in it is a bug."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            dist, builtin, _ = origin.get(name, ("unknown distribution", False, (None, None)))
            unknown = sorted(
                hook for hook, caller in vars(pm.hook).items()
                if not hook.startswith("_") and not caller.has_spec() and any(i.plugin is exc.plugin for i in caller.get_hookimpls())
            )
            hints = [f"'{h}'" + _hook_hint(h) for h in unknown]
            problem = (
                f"plugin '{name}' from {dist} implements unknown hook(s) {', '.join(hints)} "
                f"(hooks: {', '.join(HOOK_OF_KIND.values())}); it was left out"
            )
            if builtin:
                raise PluginError(problem) from None
            registry.problems.append(problem)
            pm.unregister(exc.plugin)


def _hook_hint(hook: str) -> str:
    close = difflib.get_close_matches(hook, list(HOOK_OF_KIND.values()), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _add(registry: Registry, kind: str, cls: object, plugin: str, dist: str, found: tuple[str | None, str | None] = (None, None)) -> None:
    where = f"plugin '{plugin}' from {dist}"
    base = BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{where} returned {cls!r} from {HOOK_OF_KIND[kind]}; it must return subclasses of {base.__name__}")
    name = getattr(cls, "PLUGIN_NAME", "")
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where}: class {cls.__name__} has no PLUGIN_NAME; set PLUGIN_NAME = \"your-{kind}-name\"")
    existing = registry.parts[kind].get(name)
    if existing is not None:
        raise PluginError(
            f"{where}: {kind} name '{name}' ({cls.__name__}) is already taken by plugin "
            f"'{existing.plugin}' from {existing.distribution}; rename one of them"
        )
    registry.parts[kind][name] = PartInfo(kind, name, cls, plugin, dist, *found)


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The name and version of the distribution an entry point was found in (None: unknown)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _dist_label(name: str | None, version: str | None) -> str:
    return "an unknown distribution" if name is None else f"distribution '{name} {version}'"


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, loaded once."""
    return load_registry()
