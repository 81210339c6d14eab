"""The text-conditioned DiT: pixart-tiny, its adapter, caption conditioning and suites."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.parts import build_part
from dqar_bench.measure.records import RunDir
from dqar_bench.model.conditioning import embeddings_condition, synthetic_captions
from dqar_bench.model.models import load_model, model_family
from dqar_bench.model.sampling import denoise, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

PIXART_HEAD = """\
name: text
model: pixart-tiny
sampler: {name: ddim, steps: 6, guidance_scale: 4.5}
prompt_lengths: [8, 20]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
baseline: baseline
"""


@pytest.fixture(scope="module")
def pixart():
    return load_model("pixart-tiny", CPU, torch.float32)


def strategy(registry, gate, cache="attention-output", scheduler="all"):
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", scheduler), part("gate", gate), part("cache", cache), part("quantizer", "none"))


def run(pixart, condition, s=None, steps=6):
    scheduler = make_scheduler("ddim", pixart.scheduler_config)
    with adapter_for(pixart.transformer).install(pixart.transformer, s):
        return denoise(pixart.transformer, scheduler, condition, 0, steps, 4.5, s)


def test_pixart_tiny_is_a_text_conditioned_pixart(pixart):
    assert pixart.family == "pixart" and pixart.caption_channels == 64 and pixart.num_blocks == 4
    assert type(pixart.transformer).__name__ == "PixArtTransformer2DModel"
    assert adapter_for(pixart.transformer).family.name == "pixart"
    assert all(b.attn2 is not None for b in pixart.transformer.transformer_blocks)
    assert model_family("pixart-tiny") == "pixart" and model_family("PixArt-alpha/PixArt-XL-2-512x512") == "pixart"


def test_captions_change_the_image_and_their_length_sets_cond_len(pixart):
    short, long = synthetic_captions([8, 8], 64, CPU, torch.float32), synthetic_captions([8, 20], 64, CPU, torch.float32)
    assert (short.cond_len, long.cond_len) == (8, 20)
    assert long.inputs["encoder_attention_mask"].sum(dim=1).tolist() == [8.0, 20.0]
    assert long.null_inputs["encoder_attention_mask"].sum(dim=1).tolist() == [1.0, 1.0]  # the empty prompt: one token
    assert long.inputs["added_cond_kwargs"] == {"resolution": None, "aspect_ratio": None}
    again = synthetic_captions([8, 20], 64, CPU, torch.float32)
    assert torch.equal(again.inputs["encoder_hidden_states"], long.inputs["encoder_hidden_states"])  # fixed captions
    a, b = run(pixart, short), run(pixart, long)
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-3)  # the same caption (padding is masked out)
    assert (a[1] - b[1]).abs().max() > 1.0  # image 1's caption differs


def test_parts_apply_to_self_attention_and_removal_restores_the_model(pixart, registry):
    condition = synthetic_captions([8, 20], 64, CPU, torch.float32)
    before = run(pixart, condition)
    computed = []
    handles = [b.attn2.to_q.register_forward_hook(lambda *a: computed.append("cross")) for b in pixart.transformer.transformer_blocks]
    s = strategy(registry, ("interval", {"every": 2}))
    with adapter_for(pixart.transformer).install(pixart.transformer, s):
        assert all("forward" in b.attn1.__dict__ and "forward" not in b.attn2.__dict__ for b in pixart.transformer.transformer_blocks)
    reused = run(pixart, condition, s)
    for h in handles:
        h.remove()
    assert computed.count("cross") == 6 * 4  # cross-attention computes at every step in every block
    assert s.stats.reused == 3 * 4 and not torch.equal(reused, before)
    assert torch.equal(run(pixart, condition), before)
    assert torch.equal(run(pixart, condition, strategy(registry, ("interval", {"every": 1}))), before)


@pytest.mark.parametrize("cache", ["attention-mlp-output", "block-residual", "forecast"])
def test_peers_run_on_pixart(pixart, registry, cache):
    condition = synthetic_captions([8, 20], 64, CPU, torch.float32)
    s = strategy(registry, ("interval", {"every": 2}), cache)
    out = run(pixart, condition, s)
    assert torch.isfinite(out).all() and s.stats.reused == 3 * 4


def test_the_entropy_gate_adapts_to_the_prompt_length_for_real(pixart, registry):
    """tau(p) = tau * sqrt(p / 77): with tau = 7, p = 20 gives 3.57 nats (above log 16 = 2.77, the most
    16 tokens can have) and p = 8 gives 2.26 (below what this random model's attention measures)."""
    seen = {}
    reuse = {}
    for lengths in ([8, 8], [8, 20]):
        s = strategy(registry, ("entropy", {"threshold": 7.0, "entropy": "nats", "adapt_to_length": True}))
        decide = s.gate.decide
        s.gate.decide = lambda ctx, eligible, s=s, decide=decide: seen.setdefault(tuple(lengths), set()).add(ctx.cond_len) or decide(ctx, eligible)
        run(pixart, synthetic_captions(lengths, 64, CPU, torch.float32), s)
        reuse[tuple(lengths)] = s.stats.reused
    assert seen == {(8, 8): {8}, (8, 20): {20}}
    assert reuse[(8, 8)] == 0 and reuse[(8, 20)] > 0


def test_a_text_suite_runs_through_the_runner(write_suite, tmp_path):
    from dqar_bench.cli import main

    path = write_suite(PIXART_HEAD + "cases:\n  - name: baseline\n  - name: pab\n    gate: {name: interval, every: 2}\n    scheduler: timestep-window\n")
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    records = {r.case: r for r in RunDir(out).records()}
    assert records["pab"].status == "ok" and records["pab"].batch == 2 and records["pab"].cond_len == 20
    assert records["pab"].quality["psnr_db"] > 0


@pytest.mark.parametrize("body, fragment", [
    (PIXART_HEAD.replace("prompt_lengths: [8, 20]\n", "") + "cases:\n  - name: baseline\n", "text-conditioned: give exactly one of"),
    (PIXART_HEAD.replace("[8, 20]", "[0, 20]") + "cases:\n  - name: baseline\n", "token counts must be in 1..120"),
    (PIXART_HEAD.replace("model: pixart-tiny", "model: dit-tiny") + "cases:\n  - name: baseline\n", "'dit-tiny' is class-conditioned"),
])
def test_text_settings_are_checked_at_validate(write_suite, registry, body, fragment):
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(body), registry)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_precomputed_embeddings_are_a_caption_source(write_suite, registry, tmp_path):
    embeds, mask = torch.randn(3, 5, 64), torch.tensor([[1.0] * 5, [1.0] * 2 + [0.0] * 3, [1.0] * 4 + [0.0]])
    file = tmp_path / "captions.safetensors"
    save_file({"prompt_embeds": embeds, "prompt_attention_mask": mask,
               "negative_prompt_embeds": torch.randn(1, 5, 64), "negative_prompt_attention_mask": torch.tensor([[1.0, 0, 0, 0, 0]])}, str(file))
    suite = load_suite(write_suite(PIXART_HEAD.replace("prompt_lengths: [8, 20]", f"prompt_embeddings: {file}") + "cases:\n  - name: baseline\n"), registry)
    assert suite.batch == 3 and suite.prompt_embeddings == str(file)
    condition = embeddings_condition(file, CPU, torch.float32)
    assert condition.batch == 3 and condition.cond_len == 5
    assert condition.null_inputs["encoder_hidden_states"].shape == (3, 5, 64)


@pytest.mark.parametrize("name", ["peers.yaml", "peers-dit-xl-256.yaml", "peers-pixart-512.yaml"])
def test_shipped_peer_suites_validate(name, registry):
    suite = load_suite(ROOT / "suites" / name, registry)
    assert suite.cases and all(suite.baseline_for(c) for c in suite.cases)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compile", "cudagraph"])
def test_pixart_runs_in_the_strong_modes(pixart, registry, mode):
    """Compiled (Dynamo only, to stay fast) and CUDA graphs (the CPU stand-in of test_execution)."""
    from dqar_bench.strategy.execution import Execution, ExecutionOptions
    from dqar_bench.testing import ReplayedGraphs

    condition = synthetic_captions([8, 20], 64, CPU, torch.float32)

    def run_in(which):
        s = strategy(registry, ("warmup-interval", {"every": 4, "warmup": 2}), ("forecast", {"order": 2}))
        execution = Execution(which, pixart.transformer, s, ExecutionOptions(compile_backend="eager"), graphs=ReplayedGraphs)
        with adapter_for(pixart.transformer).install(pixart.transformer, s), execution as forward:
            outs = [denoise(pixart.transformer, make_scheduler("ddim", pixart.scheduler_config), condition, seed, 8, 4.5, s, forward) for seed in (0, 1)]
        return outs, execution.report()

    eager, _ = run_in("eager")
    strong, report = run_in(mode)
    for a, b in zip(strong, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert report["graphs"] == 2 and report["eager_fallback_steps"] == 0  # compute steps and forecast steps
