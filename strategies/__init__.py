"""Built-in strategy parts.

Each module is a plugin like any third-party one (it implements the `dqar_bench` hooks);
it is registered by module path so that it works without install metadata. Add a module
here and to `BUILTIN_MODULES` to ship a new built-in part.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "strategies.schedulers.all",
    "strategies.schedulers.linear",
    "strategies.schedulers.linear_reverse",
    "strategies.schedulers.exponential",
    "strategies.schedulers.step",
    "strategies.schedulers.timestep_window",
    "strategies.schedulers.front_rear",
    "strategies.schedulers.seed_linear",
    "strategies.gates.never",
    "strategies.gates.always",
    "strategies.gates.interval",
    "strategies.gates.entropy",
    "strategies.gates.snr",
    "strategies.gates.dqar",
    "strategies.gates.policy",
    "strategies.gates.residual_change",
    "strategies.gates.warmup_interval",
    "strategies.gates.teacache",
    "strategies.gates.magnitude",
    "strategies.caches.attention_output",
    "strategies.caches.kv",
    "strategies.caches.block_residual",
    "strategies.caches.attention_mlp_output",
    "strategies.caches.cross_attention_output",
    "strategies.caches.forecast",
    "strategies.caches.faster_attention",
    "strategies.quantizers.none",
    "strategies.quantizers.int8",
    "strategies.quantizers.fp8",
)
