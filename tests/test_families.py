"""Model families as data: every built-in part on the tiny model of every family.

The matrix runs each gate, cache, quantizer and scheduler on each family for a short
sampling call (or checks that the family refuses it, with a reason, at install and at
validate alike); outputs are finite, a part that reuses changes them, and once every part
has been installed and removed the untouched model still gives bit-identical outputs.
"""

from __future__ import annotations

import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.context import StepContext
from dqar_bench.core.errors import ModelError, SuiteError
from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.models import BUILTIN_FAMILIES, TINY_MODELS, load_model
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import BlockForward, adapter_for
from dqar_bench.strategy.strategy import Strategy

CPU = torch.device("cpu")
STEPS = 3
GUIDANCE = 3.0

# Every built-in part, with settings that make it reuse on a 3-step call where it can.
GATES = {
    "never": ("never", {}),
    "always": ("always", {}),
    "interval": ("interval", {"every": 2}),
    "warmup-interval": ("warmup-interval", {"every": 2, "warmup": 1}),
    "entropy": ("entropy", {"threshold": 1.0}),
    "snr": ("snr", {"snr_low": 0.0, "snr_high": 1e9}),
    "dqar": ("dqar", {"threshold": 1.0, "warmup": 1, "snr_low": 0.0, "snr_high": 1e9}),
    "policy": ("policy", {"threshold": 0.01}),
    "residual-change": ("residual-change", {"threshold": 1e9}),
    "dbcache": ("dbcache", {"threshold": 1e9, "fn": 1, "bn": 1, "warmup": 1}),
    "teacache": ("teacache", {"threshold": 1e9, "warmup": 1}),  # Wan's official 5 warm-up steps exceed these runs
    "magnitude": ("magnitude", {"threshold": 1e9, "retention_ratio": 0.0}),
}
CACHES = {name: name for name in ("attention-output", "kv", "attention-mlp-output", "cross-attention-output", "block-residual", "forecast", "faster-attention")}
QUANTIZERS = {  # `none` is every other case's quantizer
    "int8-per-channel": ("int8", {"mode": "per_channel"}),
    "int8-per-head": ("int8", {"mode": "per_head", "heads": 2}),
    "fp8": ("fp8", {}),
}
SCHEDULERS = ("all", "linear", "linear-reverse", "exponential", "step", "timestep-window", "front-rear", "seed-linear")


def _assembly(kind: str, name: str) -> dict[str, object]:
    """The four parts of one matrix case: the part under test, the others chosen to let it reuse."""
    parts: dict[str, object] = {"scheduler": "all", "gate": ("interval", {"every": 2}), "cache": "attention-output", "quantizer": "none"}
    if kind == "gate":
        parts["gate"] = GATES[name]
        if name in ("residual-change", "dbcache", "teacache", "magnitude"):
            parts["cache"] = "block-residual"
    elif kind == "cache":
        parts["cache"] = CACHES[name]
    elif kind == "quantizer":
        parts["quantizer"] = QUANTIZERS[name]
        parts["cache"] = "block-residual"  # a two-stream block stores a pair: each stream is quantized
    else:
        parts["scheduler"] = (name, {"warmup": 0.0}) if name in ("linear", "linear-reverse", "exponential", "step") else name
    return parts


MATRIX = [(kind, name) for kind, names in (("gate", GATES), ("cache", CACHES), ("quantizer", QUANTIZERS), ("scheduler", SCHEDULERS)) for name in names]


class Tiny:
    """A family's tiny model, its conditioning and its untouched output, built once per session."""

    def __init__(self, family: str) -> None:
        self.model = load_model(TINY_MODELS[family], CPU, torch.float32)
        self.spec = self.model.spec
        if self.spec.text is None:
            self.condition = labels_condition([1, 3], self.model.null_class, CPU)
        else:
            m = self.model
            self.condition = synthetic_captions([3, 5], m.text_width, CPU, torch.float32, self.spec.text, m.pooled_width, m.text_length)
        self.baseline = self.run()

    def run(self, strategy: Strategy | None = None, steps: int = STEPS, observer=None, forward=None, guidance: float = GUIDANCE) -> torch.Tensor:
        scheduler = make_scheduler(self.spec.sampler, self.model.scheduler_config)
        return denoise(self.model.transformer, scheduler, self.condition, 0, steps, guidance, observer or strategy, forward)


@pytest.fixture(scope="session")
def tinies():
    built: dict[str, Tiny] = {}

    def get(family: str) -> Tiny:
        if family not in built:
            built[family] = Tiny(family)
        return built[family]

    return get


def strategy(registry, parts: dict[str, object]) -> Strategy:
    def part(kind):
        spec = parts[kind]
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler"), part("gate"), part("cache"), part("quantizer"), 16)


def test_every_family_has_a_tiny_model_of_its_own_class():
    assert set(TINY_MODELS) == set(families.names())
    assert {BUILTIN_FAMILIES[m] for m in TINY_MODELS.values()} == set(families.names())
    assert len(families.names()) == len(set(families.names())) >= 8


def test_the_matrix_covers_every_built_in_part(registry):
    """A registry without autoload holds the built-ins only: each must be in the matrix."""
    for kind, covered in (("gate", GATES), ("cache", CACHES), ("quantizer", {"none"} | {q for q, _ in QUANTIZERS.values()}), ("scheduler", SCHEDULERS)):
        missing = set(registry.names(kind)) - set(covered)
        assert not missing, f"{kind}s missing from the matrix: {missing}"


@pytest.mark.parametrize("kind, name", MATRIX, ids=[f"{k}-{n}" for k, n in MATRIX])
@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_every_part_runs_or_is_refused_on_every_family(tinies, registry, family, kind, name):
    tiny = tinies(family)
    s = strategy(registry, _assembly(kind, name))
    transformer = tiny.model.transformer
    reason = tiny.spec.refusal(type(s.cache))
    if reason:
        assert "\n" not in reason and tiny.spec.name in reason
        with pytest.raises(NotImplementedError, match="computes self-attention itself|has no cross-attention module"):
            adapter_for(transformer).install(transformer, s)
        return
    with adapter_for(transformer).install(transformer, s):
        out = tiny.run(s)
    assert not any("forward" in m.__dict__ for m in transformer.modules())  # removed cleanly
    assert out.shape == tiny.baseline.shape and torch.isfinite(out).all()
    assert s.stats.evaluations == STEPS * tiny.model.num_blocks
    if kind in ("cache", "quantizer") or name in ("interval", "warmup-interval", "teacache", "magnitude"):
        assert s.stats.reused > 0 and not torch.equal(out, tiny.baseline)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_after_every_part_the_untouched_model_gives_bit_identical_outputs(tinies, family):
    """Runs after the matrix (pytest keeps the file's order): nothing any part did is left on the model."""
    tiny = tinies(family)
    state = {k: v.clone() for k, v in tiny.model.transformer.state_dict().items()}
    assert torch.equal(tiny.run(), tiny.baseline)
    assert all(torch.equal(v, state[k]) for k, v in tiny.model.transformer.state_dict().items())


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_the_entropy_probe_reads_every_block_and_changes_nothing(tinies, registry, family):
    """A gate that reads entropy and never reuses: every block gets a finite entropy (joint
    attention too, blocks of different token counts too) and the output stays bit-identical."""
    tiny = tinies(family)
    seen: list[list[float]] = []
    s = strategy(registry, {"scheduler": "all", "gate": "never", "cache": "attention-output", "quantizer": "none"})
    s.gate.SIGNALS = frozenset({signals.ENTROPY, signals.SNR})
    s.gate.decide = lambda ctx, eligible: seen.append(list(ctx.signals[signals.ENTROPY])) or [False] * len(eligible)
    with adapter_for(tiny.model.transformer).install(tiny.model.transformer, s):
        out = tiny.run(s)
    assert torch.equal(out, tiny.baseline)
    assert seen and all(len(h) == tiny.model.num_blocks for h in seen)
    assert all(0.0 < h < 10.0 for h in seen[-1])  # finite and at most log(tokens)


def test_a_joint_attention_cache_holds_image_and_text_outputs(tinies, registry):
    tiny = tinies("flux")
    s = strategy(registry, _assembly("cache", "attention-output"))
    with adapter_for(tiny.model.transformer).install(tiny.model.transformer, s):
        tiny.run(s)
        dual, single = s.caches["attention"]._held[0], s.caches["attention"]._held[2]
    assert isinstance(dual, tuple) and len(dual) == 2  # (image, text) from a dual-stream block
    assert not isinstance(single, tuple)  # one tensor from a single-stream block
    image, text = (p.unpack() for p in dual)
    assert image.shape[1] == 16 and text.shape[1] == 5  # 16 packed image tokens, the longest caption's 5


def test_a_two_stream_block_reuses_each_stream_in_its_own_order(registry):
    """FLUX and SD3 blocks take (hidden, encoder) and return (encoder, hidden): the residual of each
    stream is kept and added back to the same stream, and the block's own order is kept."""

    class Joint(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states, temb=None):
            return encoder_hidden_states * 2, hidden_states + 1

    block = Joint()
    s = strategy(registry, {"scheduler": "all", "gate": ("interval", {"every": 2}), "cache": "block-residual", "quantizer": "none"})
    s.bind({"block": {0}})
    wrapped = BlockForward(s, "block", 0, block, families.ENCODER_FIRST)
    s.begin(2, 1, CPU)
    h0, e0, h1, e1 = torch.full((1, 2), 1.0), torch.full((1, 3), 10.0), torch.full((1, 2), 5.0), torch.full((1, 3), 20.0)
    s.before_step(StepContext(0, 2, 999, h0))
    enc, hid = wrapped(h0, encoder_hidden_states=e0)
    assert torch.equal(enc, e0 * 2) and torch.equal(hid, h0 + 1)
    s.after_step()
    s.before_step(StepContext(1, 2, 500, h1))
    enc, hid = wrapped(hidden_states=h1, encoder_hidden_states=e1)  # reused: input + the residual of step 0
    assert torch.equal(enc, e1 + e0) and torch.equal(hid, h1 + 1)
    assert s.stats.reused == 0 and s._reuse == [True]


def test_a_model_class_without_an_entry_fails_in_one_line():
    class MyTransformer(torch.nn.Module):
        pass

    with pytest.raises(ModelError) as err:
        adapter_for(MyTransformer())
    message = str(err.value)
    assert "\n" not in message and "MyTransformer" in message and "dqar_bench/model/families.py" in message


def test_a_checkpoint_of_an_unknown_class_is_refused_at_validate(write_suite, registry, tmp_path):
    folder = tmp_path / "my-model" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"_class_name": "MyTransformer3DModel"}')
    path = write_suite(f"name: x\nmodel: {tmp_path / 'my-model'}\ncases:\n  - name: baseline\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, registry)
    assert "\n" not in str(err.value) and "MyTransformer3DModel" in str(err.value) and "Family entry" in str(err.value)


def test_a_checkpoint_finds_its_family_by_its_pipeline(tmp_path):
    from dqar_bench.model.models import model_family

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"_class_name": "PixArtTransformer2DModel"}')
    assert model_family(str(tmp_path)) == "pixart"
    (tmp_path / "model_index.json").write_text('{"_class_name": "PixArtSigmaPipeline"}')
    assert model_family(str(tmp_path)) == "pixart-sigma"
    assert model_family("black-forest-labs/FLUX.1-dev") == "flux" and model_family("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "wan"
    assert model_family("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS") == "pixart-sigma"


HEAD = """\
name: x
model: {model}
sampler: {{steps: 3{sampler}}}
prompt_lengths: [4]
device: cpu
cases:
  - name: baseline
"""


@pytest.mark.parametrize("model, extra, fragment", [
    ("flux-tiny", "  - name: kv\n    gate: interval\n    cache: kv\n", "cache 'kv' computes self-attention itself"),
    ("cogvideox-tiny", "  - name: cross\n    gate: interval\n    cache: cross-attention-output\n", "family 'cogvideox' has no cross-attention module"),
])
def test_parts_a_family_cannot_host_are_refused_at_validate(write_suite, registry, model, extra, fragment):
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(HEAD.format(model=model, sampler="") + extra), registry)
    assert "\n" not in str(err.value) and fragment in str(err.value)


def test_a_family_samples_with_its_own_sampler_by_default_and_refuses_a_wrong_one(write_suite, registry):
    suites = {m: load_suite(write_suite(HEAD.format(model=m, sampler=""), f"{m}.yaml"), registry) for m in ("flux-tiny", "cogvideox-tiny", "pixart-sigma-tiny")}
    assert {m: s.sampler for m, s in suites.items()} == {"flux-tiny": "flow-euler", "cogvideox-tiny": "ddim", "pixart-sigma-tiny": "dpm-solver"}
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(HEAD.format(model="flux-tiny", sampler=", name: ddim")), registry)
    assert "\n" not in str(err.value) and "cannot sample a flow-matching model; use flow-euler" in str(err.value)
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(HEAD.format(model="dit-tiny", sampler=", name: flow-euler").replace("prompt_lengths: [4]\n", "")), registry)
    assert "samples flow-matching models only" in str(err.value)
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(HEAD.format(model="sd3-tiny", sampler="").replace("prompt_lengths: [4]", "prompts: [a cat]")), registry)
    assert "family sd3 encodes prompts with its own pipeline's text encoders" in str(err.value)


def test_models_command_lists_every_family_and_built_in_model(capsys):
    from dqar_bench.cli import main
    from dqar_bench.model.models import BUILTIN_MODELS

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in families.FAMILIES:
        assert family.name in out and family.classes[0] in out and family.pipeline in out
    for name in BUILTIN_MODELS:
        assert name in out
    assert "transformer_blocks + single_transformer_blocks" in out and "cfg-separate" in out and "flow-euler" in out
    assert "kv: refused" in out and "cross-attention-output: refused (family 'dit' has no cross-attention module" in out
    assert "cache targets: attention, attention+mlp, cross-attention, block" in out  # pixart, pixart-sigma, wan


def test_a_suite_of_several_models_is_one_suite_per_model(registry, capsys):
    from pathlib import Path

    from dqar_bench.cli import main
    from dqar_bench.config.suite import load_suites

    path = Path(__file__).resolve().parent.parent / "suites" / "peers-flow.yaml"
    suites = load_suites(path, registry)
    assert [(s.name, s.model, s.sampler) for s in suites] == [
        ("peers-flow-flux-tiny", "flux-tiny", "flow-euler"), ("peers-flow-sd3-tiny", "sd3-tiny", "flow-euler"), ("peers-flow-wan-tiny", "wan-tiny", "flow-euler"),
    ]
    assert all([c.name for c in s.cases] == [c.name for c in suites[0].cases] for s in suites)
    with pytest.raises(SuiteError, match="holds 3 suites .*; this command takes one"):
        load_suite(path, registry)
    assert main(["validate", str(path)]) == 0 and capsys.readouterr().out.count(": ok: ") == 3


@pytest.mark.slow
def test_a_multi_model_suite_runs_each_model_into_its_own_folder(write_suite, tmp_path):
    from dqar_bench.cli import main
    from dqar_bench.measure.records import RunDir

    body = HEAD.format(model="[sd3-tiny, hunyuan-video-tiny]", sampler="").replace("device: cpu", "device: cpu\ntiming: {warmup: 0, repeats: 1}")
    body += "  - name: fora\n    gate: {name: interval, every: 2}\n    cache: attention-mlp-output\n"
    assert main(["run", str(write_suite(body)), "-o", str(tmp_path / "run")]) == 0
    for model in ("sd3-tiny", "hunyuan-video-tiny"):
        records = {r.case: r for r in RunDir(tmp_path / "run" / model).records()}
        assert records["fora"].status == "ok" and records["fora"].model == model and records["fora"].reuse_ratio > 0
        assert records["fora"].quality["space"] == "image"  # decoded by the family's own tiny VAE (video: frame by frame)


@pytest.mark.parametrize("family, mode", [("flux", "cudagraph"), ("wan", "cudagraph")])
def test_joint_blocks_and_two_pass_guidance_run_in_the_strong_modes(tinies, registry, family, mode):
    """CUDA graphs (the CPU stand-in of test_execution): FLUX's tuples of streams in fixed slots,
    Wan's per-branch entries with the branch in the graph key. (`compile` runs the same hooks
    through Dynamo; on FLUX it matches eager too, but tracing it takes 15 s, so it is not a test.)"""
    from dqar_bench.strategy.execution import Execution, ExecutionOptions
    from tests.test_execution import ReplayedGraphs

    tiny = tinies(family)
    transformer = tiny.model.transformer

    def run_in(which):
        s = strategy(registry, {"scheduler": "all", "gate": ("interval", {"every": 2}), "cache": "block-residual", "quantizer": "none"})
        execution = Execution(which, transformer, s, ExecutionOptions(compile_backend="eager"), graphs=ReplayedGraphs)
        with adapter_for(transformer).install(transformer, s), execution as forward:
            outs = [tiny.run(s, steps=4, forward=forward) for _ in range(2)]
        return outs, execution.report(), s

    eager, _, _ = run_in("eager")
    strong, report, s = run_in(mode)
    for a, b in zip(strong, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    branches = 2 if tiny.spec.guidance == "cfg-separate" else 1
    assert report["graphs"] == 2 * branches and report["eager_fallback_steps"] == 0  # compute and reuse steps, per branch


def test_a_flow_matching_model_of_a_diffusion_family_gets_the_flow_sampler(write_suite, registry, monkeypatch):
    """A built-in that predicts flow in a family whose pipeline ships a diffusion schedule (a
    flow-trained DiT, like digits-flow) says so in BUILTIN_PREDICTIONS; validate then gives it flow-euler."""
    from dqar_bench.model import models

    monkeypatch.setattr(models, "BUILTIN_MODELS", dict(models.BUILTIN_MODELS))
    monkeypatch.setattr(models, "BUILTIN_FAMILIES", dict(models.BUILTIN_FAMILIES))
    monkeypatch.setattr(models, "BUILTIN_PREDICTIONS", dict(models.BUILTIN_PREDICTIONS))
    models.BUILTIN_MODELS["flow-dit"], models.BUILTIN_FAMILIES["flow-dit"] = models.build_dit_tiny, "dit"
    models.BUILTIN_PREDICTIONS["flow-dit"] = "flow"  # as digits-flow is declared
    body = HEAD.format(model="flow-dit", sampler="").replace("prompt_lengths: [4]\n", "")
    assert load_suite(write_suite(body), registry).sampler == "flow-euler"
    with pytest.raises(SuiteError, match="cannot sample a flow-matching model"):
        load_suite(write_suite(body.replace("{steps: 3}", "{steps: 3, name: ddim}")), registry)


def test_a_checkpoint_folder_loads_with_its_familys_classes(tmp_path, monkeypatch):
    """A diffusers folder (model_index.json, transformer/, vae/, scheduler/) of a non-DiT family:
    its family from the pipeline class, its transformer and VAE classes from their configs."""
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = load_model("sd3-tiny", CPU, torch.float32)
    folder = tmp_path / "sd3-checkpoint"
    tiny.transformer.save_pretrained(folder / "transformer")
    tiny.vae.save_pretrained(folder / "vae")
    FlowMatchEulerDiscreteScheduler(shift=2.5).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    loaded = load_model(str(folder), CPU, torch.float32)
    assert (loaded.family, type(loaded.transformer).__name__, type(loaded.vae).__name__) == ("sd3", "SD3Transformer2DModel", "AutoencoderKL")
    assert loaded.scheduler_config["shift"] == 2.5 and loaded.latent_shape == (4, 8, 8)
    condition = synthetic_captions([3], 32, CPU, torch.float32, loaded.spec.text, 16)
    a = denoise(loaded.transformer, make_scheduler("flow-euler", tiny.scheduler_config), condition, 0, 2, 3.0)
    b = denoise(tiny.transformer, make_scheduler("flow-euler", tiny.scheduler_config), condition, 0, 2, 3.0)
    assert torch.equal(a, b)  # the same weights, the same outputs


def test_fid_on_a_video_model_is_refused_at_validate(write_suite, registry):
    body = HEAD.format(model="wan-tiny", sampler="") + "quality: {fid: 10}\n"
    with pytest.raises(SuiteError, match="FID, IS and KID score images; model 'wan-tiny' \\(family wan\\) makes videos"):
        load_suite(write_suite(body), registry)


def test_a_strategy_installed_again_gives_the_same_outputs_on_a_two_stream_model():
    """Interleaved rounds install a case's strategy once per round: the slots the adapter adds
    on each install (FLUX's ff_context, proj_mlp) must start empty, not as copies of a cache
    that already held the joint attention's (image, text) outputs."""
    from types import SimpleNamespace

    from dqar_bench.config.suite import Case, PartSpec
    from dqar_bench.core.plugins import load_registry
    from dqar_bench.model.sampling import denoise, make_scheduler
    from dqar_bench.model.suite_condition import condition_for
    from dqar_bench.runs.runner import build_strategy
    from dqar_bench.strategy.adapter import adapter_for

    model = load_model("flux-tiny", CPU, torch.float32)
    suite = SimpleNamespace(class_labels=[0], prompt_lengths=[4, 6], prompts=None, prompt_embeddings=None, allow_download=False)
    condition = condition_for(suite, model, CPU, torch.float32)
    parts = {"scheduler": PartSpec("scheduler", "all"), "gate": PartSpec("gate", "warmup-interval", {"every": 2, "warmup": 1}),
             "cache": PartSpec("cache", "forecast", {"order": 2}), "quantizer": PartSpec("quantizer", "none")}
    strategy = build_strategy(Case("ts", parts), load_registry(autoload=False))
    outputs = []
    for _ in range(2):  # two installs, as two rounds do
        with adapter_for(model.transformer).install(model.transformer, strategy):
            outputs.append(denoise(model.transformer, make_scheduler("flow-euler", model.scheduler_config), condition, 0, 6, 3.5, strategy))
    assert torch.equal(outputs[0], outputs[1])
