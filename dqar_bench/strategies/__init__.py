"""Built-in strategy parts.

Each module is a plugin like any third-party one (it implements the `dqar_bench` hooks);
it is registered by module path so that it works without install metadata. Add a module
here and to `BUILTIN_MODULES` to ship a new built-in part.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "dqar_bench.strategies.schedulers.all",
    "dqar_bench.strategies.schedulers.linear",
    "dqar_bench.strategies.schedulers.linear_reverse",
    "dqar_bench.strategies.schedulers.exponential",
    "dqar_bench.strategies.schedulers.step",
    "dqar_bench.strategies.schedulers.timestep_window",
    "dqar_bench.strategies.schedulers.front_rear",
    "dqar_bench.strategies.schedulers.seed_linear",
    "dqar_bench.strategies.gates.never",
    "dqar_bench.strategies.gates.always",
    "dqar_bench.strategies.gates.interval",
    "dqar_bench.strategies.gates.entropy",
    "dqar_bench.strategies.gates.snr",
    "dqar_bench.strategies.gates.dqar",
    "dqar_bench.strategies.gates.policy",
    "dqar_bench.strategies.gates.dbcache",
    "dqar_bench.strategies.gates.residual_change",
    "dqar_bench.strategies.gates.warmup_interval",
    "dqar_bench.strategies.gates.teacache",
    "dqar_bench.strategies.gates.magnitude",
    "dqar_bench.strategies.caches.attention_output",
    "dqar_bench.strategies.caches.kv",
    "dqar_bench.strategies.caches.block_residual",
    "dqar_bench.strategies.caches.attention_mlp_output",
    "dqar_bench.strategies.caches.cross_attention_output",
    "dqar_bench.strategies.caches.forecast",
    "dqar_bench.strategies.caches.faster_attention",
    "dqar_bench.strategies.quantizers.none",
    "dqar_bench.strategies.quantizers.int8",
    "dqar_bench.strategies.quantizers.fp8",
)
