"""Latents of the pre-families code for tests/test_old_path.py.

Run from a checkout of commit 59559e4 (the hand-written DiT/PixArt adapters), in its root:
`git archive 59559e4 | tar -x -C /tmp/old && cp tests/data/make_old_path_latents.py /tmp/old && cd /tmp/old && PYTHONPATH=. python make_old_path_latents.py`
"""
import torch
from safetensors.torch import save_file

from dqar_bench.core.parts import build_part
from dqar_bench.core.plugins import load_registry
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

torch.set_num_threads(1)
reg = load_registry(autoload=False)
cpu = torch.device("cpu")

def strat(gate, cache="attention-output", quant="none", sched="all"):
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(reg.get(kind, name).cls, params)
    return Strategy(part("scheduler", sched), part("gate", gate), part("cache", cache), part("quantizer", quant), 16)

CASES = {
    "baseline": None,
    "interval": lambda: strat(("interval", {"every": 2})),
    "dqar": lambda: strat(("dqar", {"threshold": 2.76, "warmup": 1, "max_reuse": 2}), "attention-output", "int8", ("step", {"layer_fraction": 1.0})),
    "kv": lambda: strat(("interval", {"every": 2}), "kv", ("int8", {"mode": "per_head"})),
    "fora": lambda: strat(("interval", {"every": 3}), "attention-mlp-output"),
    "taylorseer": lambda: strat(("warmup-interval", {"every": 3, "warmup": 2}), ("forecast", {"order": 2})),
    "fbc": lambda: strat(("residual-change", {"threshold": 0.3}), "block-residual"),
    "delta": lambda: strat(("interval", {"every": 2}), "block-residual", ("fp8", {}), "front-rear"),
    "snr": lambda: strat(("snr", {"snr_low": 0.05, "snr_high": 20.0})),
    "policy": lambda: strat(("policy", {"weights": "dit-tiny", "threshold": 0.5})),
    "pab": lambda: strat(("interval", {"every": 2}), "attention-output", ("int8", {"mode": "per_channel"}), "timestep-window"),
}
out = {}
for model_name, sampler, steps, guidance in [("dit-tiny", "ddim", 8, 4.0), ("dit-tiny", "dpm-solver", 8, 4.0), ("digits-dit", "ddim", 10, 1.5), ("pixart-tiny", "ddim", 6, 4.5), ("pixart-tiny", "dpm-solver", 6, 1.0)]:
    m = load_model(model_name, cpu, torch.float32)
    if m.family == "pixart":
        cond = synthetic_captions([8, 20], 64, cpu, torch.float32)
    else:
        cond = labels_condition([1, 3], m.null_class, cpu)
    for case, make in CASES.items():
        s = make() if make else None
        sch = make_scheduler(sampler, m.scheduler_config)
        with adapter_for(m.transformer).install(m.transformer, s):
            lat = denoise(m.transformer, sch, cond, 0, steps, guidance, s)
        key = f"{model_name}/{sampler}/{case}"
        out[key] = lat.contiguous()
        print(key, s.stats.reused if s else "-", float(lat.abs().mean()))
save_file(out, "old_path_latents.safetensors")
