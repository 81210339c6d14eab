"""The model's own pipeline (`model: {pipeline: folder}`) against the lean loop, per family.

For DiT, PixArt-Sigma, SD3, FLUX and Wan a tiny pipeline is built in code from the tiny
model's transformer and VAE (`tests/pipeline_builders.py`: no text encoders; captions are the
suite's synthetic `prompt_lengths`, which reach the pipeline as `prompt_embeds`), saved,
and run by `dqar-bench run` through the pipeline and through the lean loop on the same
seeds. The pipeline's decoded images must equal the lean latents decoded by the harness
(`quality.decoder`, the same VAE) to float32 rounding: the two reach the same images by ops
in another order (the pipeline's own latent scaling, DiTPipeline's `1 / scaling_factor * x`
and WanPipeline's `x / (1 / std)` against the harness's division, its postprocess, its CFG
batching), and which of those orders rounds alike depends on the CPU's kernels. So they
agree within IMAGE_TOLERANCE, 32 float32 ulps of 1.0 (3.8e-6) on images in [0, 1]; measured
at most 8.6e-7 on two machines. A strategy that reused other blocks would move them by 1e-3
or more, and the reuse counts, integers, must match exactly.
A strategy installed through the pipeline reuses exactly as on the lean path (the step
hooks hand it the same step context), and once removed the pipeline's outputs are
bit-identical to the untouched pipeline's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dqar_bench.config.suite import load_suite
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.quality import decoder
from dqar_bench.measure.records import read_records
from dqar_bench.model import models
from dqar_bench.runs.runner import run_suite

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_builders import run_records as _run  # noqa: E402
from pipeline_builders import save_pipeline
from pipeline_builders import saved_outputs as _outputs

FAMILIES = ("dit", "pixart-sigma", "sd3", "flux", "wan")
IMAGE_TOLERANCE = 32 * torch.finfo(torch.float32).eps  # module docstring
CASES = [
    {"name": "baseline"},
    {"name": "interval", "gate": {"name": "interval", "every": 2}, "cache": "attention-output"},
    {"name": "snr", "gate": {"name": "snr", "snr_low": 0.0, "snr_high": 1.0e9}, "cache": "block-residual"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {family: save_pipeline(family, root / family) for family in FAMILIES}


def _suite(path: Path, model: object, family: str) -> Path:
    data: dict = {
        "name": path.stem, "model": model, "sampler": {"steps": 4, "guidance_scale": 3.0}, "seeds": [0],
        "device": "cpu", "dtype": "float32", "timing": {"warmup": 0, "repeats": 1}, "cases": CASES,
    }
    if family == "dit":
        data["class_labels"] = [1, 7]
    else:
        data["prompt_lengths"] = [8, 20]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_gives_the_lean_outputs(family: str, folders: dict[str, Path], tmp_path: Path) -> None:
    folder = folders[family]
    lean_model = str(folder) if family == "dit" else models.TINY_MODELS[family]  # the DiT pipeline needs 1000 classes
    lean, lean_dir = _run(_suite(tmp_path / "lean.yaml", lean_model, family), tmp_path / "lean")
    piped, piped_dir = _run(_suite(tmp_path / "piped.yaml", {"pipeline": str(folder)}, family), tmp_path / "piped")
    decode = decoder(models.load_model(lean_model, torch.device("cpu"), torch.float32).vae)  # the same VAE as the pipeline's
    for case in ("baseline", "interval", "snr"):
        assert lean[case].status == piped[case].status == "ok", (lean[case].error, piped[case].error)
        images = _outputs(piped_dir, piped[case])
        expected = decode(_outputs(lean_dir, lean[case]))
        assert images.shape == expected.shape
        diff = float((images - expected).abs().max())
        assert diff <= IMAGE_TOLERANCE, f"{family} {case}: max abs diff {diff}"
        assert piped[case].reused == lean[case].reused
    assert piped["interval"].reused > 0 and piped["snr"].reused > 0
    assert piped["baseline"].pipeline_class == json.loads((folder / "model_index.json").read_text())["_class_name"]
    assert lean["baseline"].pipeline_class is None
    assert piped["baseline"].identity["pipeline"] == str(folder) and "pipeline" not in lean["baseline"].identity
    assert piped["baseline"].quality is None and piped["interval"].quality["space"] == "image"
    assert flops_per_call(piped["baseline"].flops) > flops_per_call(lean["baseline"].flops)  # the same denoising, then the VAE decode


def test_removing_a_strategy_leaves_the_pipeline_bit_identical(folders: dict[str, Path]) -> None:
    from dqar_bench.config.suite import Case, PartSpec
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.model.conditioning import synthetic_captions
    from dqar_bench.model.pipelines import call_pipeline
    from dqar_bench.model.sampling import make_scheduler
    from dqar_bench.runs.case_run import build_strategy
    from dqar_bench.strategy.adapter import adapter_for

    model = models.load_model(str(folders["flux"]), torch.device("cpu"), torch.float32, pipeline=True)
    condition = synthetic_captions([8, 20], model.text_width, torch.device("cpu"), torch.float32, model.spec.text, model.pooled_width)
    call = lambda strategy: call_pipeline(model, make_scheduler("flow-euler", model.scheduler_config), condition, 0, 4, 3.5, strategy)  # noqa: E731
    before = call(None)
    parts = {"gate": PartSpec("gate", "interval", {"every": 2}), "cache": PartSpec("cache", "attention-mlp-output"),
             "scheduler": PartSpec("scheduler", "all"), "quantizer": PartSpec("quantizer", "none")}
    strategy = build_strategy(Case("fora", parts), get_registry())
    with adapter_for(model.transformer).install(model.transformer, strategy):
        reused = call(strategy)
    assert strategy.stats.reused > 0 and not torch.equal(reused, before)
    assert "step" not in model.pipeline.scheduler.__dict__ and not model.transformer._forward_pre_hooks
    assert torch.equal(call(None), before)


PROMPTS = ["a red cat sits on the mat", "the blue dog runs"]


@pytest.mark.parametrize("family", ["pixart-sigma", "sd3", "flux", "wan"])
def test_prompts_go_through_the_pipelines_encode_prompt(family: str, tmp_path: Path) -> None:
    """`prompts` are encoded once by the pipeline's own (tiny) text encoders, which are then
    freed; the embeddings give the lean loop the pipeline's outputs, and written to a
    `prompt_embeddings` file they read back the same."""
    pytest.importorskip("transformers")
    from dqar_bench.model.conditioning import embeddings_condition, save_embeddings
    from dqar_bench.model.pipelines import call_pipeline, encode_prompts
    from dqar_bench.model.sampling import denoise, make_scheduler

    cpu = torch.device("cpu")
    folder = save_pipeline(family, tmp_path / family, text_encoders=True)
    model = models.load_model(str(folder), cpu, torch.float32, pipeline=True, text_encoders=True)
    condition = encode_prompts(model, PROMPTS, cpu, torch.float32)
    assert condition.cond_len == 8  # 7 words and </s>
    assert all(v is None for k, v in model.pipeline.components.items() if k.startswith(("text_encoder", "tokenizer")))
    save_embeddings(condition, model.spec.text, tmp_path / "embeds.safetensors")
    lean = models.load_model(models.TINY_MODELS[family], cpu, torch.float32)
    read = embeddings_condition(tmp_path / "embeds.safetensors", cpu, torch.float32, lean.spec.text, lean.text_length)
    sampler = lean.spec.sampler
    latents = denoise(lean.transformer, make_scheduler(sampler, lean.scheduler_config), read, 0, 3, 3.0)
    images = call_pipeline(model, make_scheduler(sampler, model.scheduler_config), condition, 0, 3, 3.0)
    assert float((images - decoder(lean.vae)(latents)).abs().max()) <= IMAGE_TOLERANCE


@pytest.mark.slow
def test_a_suites_prompts_run_through_the_pipeline(tmp_path: Path) -> None:
    """The runner's route: `prompts:` on the pipeline path, the same embeddings as a file on the lean path."""
    pytest.importorskip("transformers")
    from dqar_bench.model.conditioning import save_embeddings
    from dqar_bench.model.pipelines import encode_prompts

    folder = save_pipeline("wan", tmp_path / "wan-text", text_encoders=True)
    model = models.load_model(str(folder), torch.device("cpu"), torch.float32, pipeline=True, text_encoders=True)
    save_embeddings(encode_prompts(model, PROMPTS, torch.device("cpu"), torch.float32), model.spec.text, tmp_path / "embeds.safetensors")
    data = yaml.safe_load(_suite(tmp_path / "piped.yaml", {"pipeline": str(folder)}, "wan").read_text())
    del data["prompt_lengths"]
    piped, lean = tmp_path / "piped.yaml", tmp_path / "lean.yaml"
    piped.write_text(yaml.safe_dump({**data, "prompts": PROMPTS, "cases": CASES[:2]}))
    lean.write_text(yaml.safe_dump({**data, "model": "wan-tiny", "prompt_embeddings": "embeds.safetensors", "cases": CASES[:2]}))
    p_records, p_dir = _run(piped, tmp_path / "p")
    l_records, l_dir = _run(lean, tmp_path / "l")
    decode = decoder(models.load_model("wan-tiny", torch.device("cpu"), torch.float32).vae)
    for case in ("baseline", "interval"):
        assert p_records[case].status == "ok" and p_records[case].cond_len == 8
        diff = (_outputs(p_dir, p_records[case]) - decode(_outputs(l_dir, l_records[case]))).abs().max()
        assert float(diff) <= IMAGE_TOLERANCE
    assert p_records["baseline"].identity["conditioning"] == {"prompts": PROMPTS}


def test_a_missing_pipeline_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from dqar_bench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = _suite(tmp_path / "gone.yaml", {"pipeline": "someone/not-downloaded-FLUX"}, "flux")
    assert main(["validate", str(suite)]) == 0  # structure only: running needs the checkpoint
    assert "not in the local Hugging Face cache" in capsys.readouterr().out
    assert main(["run", str(suite), "-o", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "gone.yaml: field 'model.pipeline'" in lines[0] and "never downloads" in lines[0]
    assert not (tmp_path / "out").exists()
    folder = _suite(tmp_path / "folder.yaml", {"pipeline": str(tmp_path / "no-such-folder")}, "flux")
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "folder.yaml: field 'model.pipeline'" in err[0] and "does not exist" in err[0]


@pytest.mark.slow
def test_compiled_cases_on_the_pipeline_path_are_unsupported_and_resume_finds_the_rest(folders: dict[str, Path], tmp_path: Path) -> None:
    suite = _suite(tmp_path / "modes.yaml", {"pipeline": str(folders["sd3"])}, "sd3")
    data = yaml.safe_load(suite.read_text())
    suite.write_text(yaml.safe_dump({**data, "execution": ["eager", "compile"], "cases": CASES[:2]}))
    records, _ = _run(suite, tmp_path / "out")
    assert records["interval@eager"].status == "ok"
    assert records["interval@compile"].status == "unsupported" and "runs eagerly" in records["interval@compile"].error
    again = run_suite(load_suite(suite), tmp_path / "out", resume=True, progress=lambda _: None)  # found by content: nothing reruns
    assert len(read_records(again.path / "records.jsonl")) == len(records)


@pytest.mark.parametrize("name, family, steps", [("peers-flux-dev", "flux", 28), ("peers-sd3", "sd3", 28), ("peers-wan", "wan", 50)])
def test_gpu_suites_validate_without_their_checkpoints(name: str, family: str, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(__file__).parent.parent / "suites" / f"{name}.yaml"
    suite = load_suite(path)
    assert suite.pipeline and models.model_family(suite.model) == family and suite.steps == steps
    assert suite.device == "cuda" and suite.dtype == "bfloat16" and suite.prompts
    flow = yaml.safe_load((path.parent / "peers-flow.yaml").read_text())["cases"]
    assert yaml.safe_load(path.read_text())["cases"] == flow  # the same peer cases as the tiny models'
    assert models.offline_problem(suite.model, False, pipeline=True)  # running needs the checkpoint


def test_what_the_pipeline_path_refuses_at_validate(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from diffusers import DDIMScheduler, DiTPipeline

    from dqar_bench.cli import main

    def error(model: object, family: str = "flux") -> str:
        assert main(["validate", str(_suite(tmp_path / "s.yaml", model, family))]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "s.yaml: field 'model.pipeline'" in lines[0], lines
        return lines[0]

    assert "built-in model" in error({"pipeline": "flux-tiny"})
    other = tmp_path / "alpha"
    shutil.copytree(folders["sd3"], other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "PixArtAlphaPipeline"}))
    assert "this checkpoint's pipeline is PixArtAlphaPipeline" in error({"pipeline": str(other)}, "sd3")
    assert "has no model_index.json" in error({"pipeline": str(folders["sd3"] / "transformer")}, "sd3")
    ten = models.build_dit_tiny()  # 10 classes: DiTPipeline's null label 1000 is not one of them
    DiTPipeline(transformer=ten.transformer, vae=models._tiny_vae(0.18215), scheduler=DDIMScheduler()).save_pretrained(str(tmp_path / "dit10"))
    assert "guides with class 1000" in error({"pipeline": str(tmp_path / "dit10")}, "dit")
    data = yaml.safe_load(_suite(tmp_path / "p.yaml", {"pipeline": str(folders["wan"])}, "wan").read_text())
    del data["prompt_lengths"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**data, "prompts": ["a cat"]}))  # saved without text encoders
    assert main(["run", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'prompts'" in err[0] and "no text_encoder or tokenizer" in err[0]
    assert not (tmp_path / "out").exists()


def test_transformers_is_an_optional_extra_named_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from dqar_bench.core.errors import ModelError
    from dqar_bench.model.pipelines import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ModelError, match=r"pip install 'dqar-bench\[text\]'"):
        require_transformers()
