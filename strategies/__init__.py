"""Built-in strategy parts.

Each module is a plugin like any third-party one (it implements the `dqar_bench` hooks);
it is registered by module path so that it works without install metadata. Add a module
here and to `BUILTIN_MODULES` to ship a new built-in part.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "strategies.schedulers.all",
    "strategies.gates.never",
    "strategies.gates.interval",
    "strategies.caches.attention_output",
    "strategies.quantizers.none",
)
