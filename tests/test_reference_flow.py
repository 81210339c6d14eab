"""digits-flow, the shipped flow-matching reference model: its files agree with its metrics.json,
it samples digits as well as its model card says, its training objective and its scheduler agree
on what a timestep and a velocity are, and broken files fail in one line naming the retrain command."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import pytest
import tomllib
import torch
from reference_training.objectives import RectifiedFlowObjective

from dqar_bench.core.errors import DqarError
from dqar_bench.model.reference import classifier as clf
from dqar_bench.model.reference import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def metrics() -> dict:
    return load.load_flow_reference_metrics()


@pytest.fixture(scope="module")
def dit():
    return load.load_flow_reference_dit()


def test_shipped_files_agree_with_metrics(metrics: dict, dit) -> None:
    assert load.load_flow_reference_dit_config() == metrics["dit_config"]
    assert not dit.training and not any(p.requires_grad for p in dit.parameters())
    assert sum(p.numel() for p in dit.parameters()) == metrics["dit_parameters"]
    assert dit.config.in_channels == dit.config.out_channels == 1
    assert dit.config.num_embeds_ada_norm == 10
    assert metrics["objective"]["name"] == "rectified-flow"
    assert load.load_flow_reference_scheduler_config() == metrics["scheduler_config"]


def test_shipped_model_meets_its_quality_bar(metrics: dict) -> None:
    baseline = metrics["evaluation"][f"{metrics['guidance_scale']:g}"]
    assert metrics["inference_steps"] == 25
    assert baseline["class_accuracy"] >= 0.95
    assert metrics["dit_train_cpu_seconds"] <= 30 * 60


def test_scheduler_config_builds_the_flow_match_euler_scheduler(metrics: dict) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = load.load_flow_reference_scheduler_config()
    raw = json.loads((load.FLOW_WEIGHTS_DIR / load.SCHEDULER_CONFIG_FILE).read_text())
    assert raw["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert config["num_train_timesteps"] == 1000 and not config["use_dynamic_shifting"]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(metrics["inference_steps"])
    assert scheduler.timesteps.shape == (metrics["inference_steps"],)
    assert scheduler.sigmas[0] == 1.0 and scheduler.sigmas[-1] == 0.0


def test_shipped_model_reaches_documented_small_sample_accuracy(metrics: dict, dit) -> None:
    from reference_training.train import eval_labels

    from dqar_bench.model.reference.flow_sampling import sample_flow_digits

    sample = metrics["test_sample"]
    labels = eval_labels(sample["size"] // 10)

    def draw() -> torch.Tensor:
        return sample_flow_digits(
            dit, load.load_flow_reference_scheduler_config(), labels,
            seed=sample["seed"], num_inference_steps=sample["inference_steps"], guidance_scale=sample["guidance_scale"],
        )

    images = draw()
    assert images.shape == (sample["size"], 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, draw()), "sampling must be deterministic on the CPU"
    # Seeded and single-process on the CPU: the shipped figure is reproduced exactly.
    assert clf.class_accuracy(images, labels) == sample["class_accuracy"]
    assert sample["class_accuracy"] >= 0.9


def test_objective_is_the_rectified_flow_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 8, 8, generator=gen) * 2 - 1
    for sampling in ("uniform", "logit-normal"):
        objective = RectifiedFlowObjective(sigma_sampling=sampling)
        xt, timestep, target = objective.corrupt(x0, torch.Generator().manual_seed(1))
        s = timestep / 1000
        assert timestep.dtype == torch.float32 and bool(((s > 0) & (s < 1)).all())
        # The pair (x0, noise) is recovered from (x_s, v): x0 = x_s - s v, noise = x_s + (1 - s) v.
        s4 = s.view(-1, 1, 1, 1)
        noise = xt + (1 - s4) * target
        torch.testing.assert_close(xt - s4 * target, x0)
        assert abs(float(noise.std()) - 1.0) < 0.1
    with pytest.raises(ValueError, match="sigma sampling"):
        RectifiedFlowObjective(sigma_sampling="cosine")


def test_scheduler_step_with_the_true_velocity_follows_the_training_path() -> None:
    """An Euler step of the shipped scheduler, fed the velocity the objective trains towards,
    lands exactly on the training path's next point: the model is sampled as it was trained."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(load.load_flow_reference_scheduler_config())
    scheduler.set_timesteps(10)
    torch.testing.assert_close(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(4, 1, 8, 8, generator=gen)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(noise - x0, t, x).prev_sample
        s_next = scheduler.sigmas[i + 1]
        torch.testing.assert_close(x, (1 - s_next) * x0 + s_next * noise)
    torch.testing.assert_close(x, x0)


def test_shipped_weights_fit_the_size_budget() -> None:
    assert (load.FLOW_WEIGHTS_DIR / load.DIT_WEIGHTS_FILE).stat().st_size <= 20 * 1024 * 1024


def test_package_data_ships_every_reference_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dqar_bench"]
    package = ROOT / "dqar_bench"
    shipped = {f for p in patterns for f in glob.glob(p, root_dir=package) if (package / f).is_file()}
    files = {str(p.relative_to(package)) for p in (package / "reference" / "weights").rglob("*") if p.is_file()}
    assert (load.FLOW_WEIGHTS_DIR / "MODEL_CARD.md").is_file()
    assert files - shipped == set()


@pytest.mark.parametrize(
    ("filename", "loader", "damage"),
    [
        (load.DIT_WEIGHTS_FILE, load.load_flow_reference_dit, "missing"),
        (load.DIT_WEIGHTS_FILE, load.load_flow_reference_dit, "truncate"),
        (load.DIT_CONFIG_FILE, load.load_flow_reference_dit, "garbage"),
        (load.SCHEDULER_CONFIG_FILE, load.load_flow_reference_scheduler_config, "missing"),
        (load.SCHEDULER_CONFIG_FILE, load.load_flow_reference_scheduler_config, "truncate"),
        (load.METRICS_FILE, load.load_flow_reference_metrics, "garbage"),
    ],
)
def test_broken_file_raises_one_line_error_naming_the_flow_retrain_command(
    tmp_path: Path, filename: str, loader, damage: str
) -> None:
    weights = tmp_path / "digits-flow"
    shutil.copytree(load.FLOW_WEIGHTS_DIR, weights)
    path = weights / filename
    if damage == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xffnot a weights file\n" * 7)
    with pytest.raises(DqarError) as info:
        loader(weights)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert load.FLOW_RETRAIN_COMMAND in message


def test_the_harness_samples_digits_flow_exactly_as_its_model_card_loop():
    """`model: digits-flow` through the harness's flow-matching sampler gives the card loop's latents bit for bit."""
    from types import SimpleNamespace

    from dqar_bench.model.models import default_sampler, load_model
    from dqar_bench.model.reference.flow_sampling import sample_flow_digits
    from dqar_bench.model.sampling import denoise, make_scheduler
    from dqar_bench.model.suite_condition import condition_for

    cpu = torch.device("cpu")
    model = load_model("digits-flow", cpu, torch.float32)
    labels = [3, 1, 4, 1, 5]
    suite = SimpleNamespace(class_labels=labels, prompt_lengths=None, prompts=None, prompt_embeddings=None, allow_download=False)
    assert default_sampler("digits-flow") == "flow-euler"
    harness = denoise(model.transformer, make_scheduler("flow-euler", model.scheduler_config), condition_for(suite, model, cpu, torch.float32), 7, 6, 1.5)
    card = sample_flow_digits(model.transformer, model.scheduler_config, torch.tensor(labels), 7, 6, 1.5)
    assert torch.equal(harness.clamp(-1.0, 1.0), card)
