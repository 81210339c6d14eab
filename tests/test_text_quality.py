"""Quality for text-conditioned models: CLIP score from a local checkpoint, LPIPS from local
weights, prompt files, and what `validate` refuses, with models built in code."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import DqarError, SuiteError
from dqar_bench.measure.clip_score import clip_score, image_scores, load_clip
from dqar_bench.measure.lpips import Lpips, LpipsConfig, load_lpips
from dqar_bench.measure.quality import compare_outputs
from dqar_bench.measure.records import RunDir
from tests.tiny_quality_models import write_lpips_weights, write_tiny_clip

CPU = torch.device("cpu")
PROMPTS = ["a red cat", "the dog and the ball", "blue", "a photograph of an astronaut riding a horse on the moon"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=3)  # a seed whose cosines are partly positive


@pytest.fixture(scope="module")
def clip(clip_dir):
    return load_clip(clip_dir, CPU)


def smooth_images(n=4, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")


def by_hand(clip_dir, images, prompts):
    """Every image against every prompt through the checkpoint's own CLIPModel forward: the
    normalised `image_embeds` and `text_embeds` it returns, as torchmetrics reads them."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(str(clip_dir), local_files_only=True)
    uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    inputs = processor(text=prompts, images=list(uint8), return_tensors="pt", padding=True, truncation=True, max_length=16)
    with torch.no_grad():
        out = model(**inputs)
    return 100 * (out.image_embeds @ out.text_embeds.T).clamp(min=0)


def test_clip_score_is_the_hand_computed_score_of_each_image_with_its_own_prompt(clip_dir, clip):
    images = smooth_images()
    matrix = by_hand(clip_dir, images, PROMPTS)
    assert matrix.std() > 1.0  # the prompts and images are told apart, so a wrong pairing shows
    matched = clip_score(images, PROMPTS, clip)
    assert matched["clip_score"] == pytest.approx(float(matrix.diagonal().mean()), abs=1e-3)
    assert matched["n"] == 4 and matched["per"] == "image" and matched["clip_score_std"] > 0
    perm = [2, 0, 3, 1]
    shuffled = clip_score(images, [PROMPTS[j] for j in perm], clip)
    expected = float(torch.stack([matrix[i, j] for i, j in enumerate(perm)]).mean())
    assert shuffled["clip_score"] == pytest.approx(expected, abs=1e-3)
    assert abs(shuffled["clip_score"] - matched["clip_score"]) > 0.1


def test_clip_prefers_the_prompt_an_image_was_chosen_for(clip_dir, clip):
    """Each image paired with the prompt the model scores highest for it beats any other pairing."""
    images = smooth_images(n=4, seed=3)
    best = by_hand(clip_dir, images, PROMPTS).argmax(dim=1).tolist()
    matched = clip_score(images, [PROMPTS[j] for j in best], clip)["clip_score"]
    worst = by_hand(clip_dir, images, PROMPTS).argmin(dim=1).tolist()
    assert matched > clip_score(images, [PROMPTS[j] for j in worst], clip)["clip_score"]


def test_clip_scores_do_not_depend_on_the_batch(clip):
    images = smooth_images(n=5, seed=1)
    prompts = PROMPTS + ["the"]
    alone = image_scores((images * 255).round().to(torch.uint8), prompts, clip, batch_size=1)
    together = image_scores((images * 255).round().to(torch.uint8), prompts, clip, batch_size=5)
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)


def test_a_video_scores_as_the_mean_over_its_frames(clip):
    video = torch.stack([smooth_images(n=3, seed=s) for s in (4, 5)], dim=0).permute(0, 2, 1, 3, 4)  # (2, 3, F=3, H, W)
    score = clip_score(video, PROMPTS[:2], clip)
    frames = [clip_score(video[i].transpose(0, 1), [PROMPTS[i]] * 3, clip)["clip_score"] for i in range(2)]
    assert score["frames"] == 3 and score["n"] == 2 and "mean over its 3 frames" in score["per"]
    assert score["clip_score"] == pytest.approx(sum(frames) / 2, abs=1e-4)


def test_long_prompts_are_cut_to_the_text_tower_and_counted(clip):
    long = " ".join(["horse"] * 40)
    score = clip_score(smooth_images(n=2), [long, "blue"], clip)
    assert score["truncated_prompts"] == 1 and score["clip_score"] >= 0


# -- LPIPS ------------------------------------------------------------------------------------


def test_lpips_vgg_matches_torch_fidelity_given_the_same_weights(monkeypatch):
    """The reference network: torch-fidelity's LPIPS (a port of richzhang's) with the same
    random VGG16 and linear layers gives the same distances."""
    import torch_fidelity.sample_similarity_lpips as tf

    torch.manual_seed(0)
    ours = Lpips("vgg")
    for lin in ours.lins:
        torch.nn.init.uniform_(lin.weight, 0, 0.01)
    linear = {f"lin{i}.model.1.weight": lin.weight.detach().clone() for i, lin in enumerate(ours.lins)}
    backbone = torch.nn.Module()
    backbone.features = ours.net
    monkeypatch.setattr(tf, "load_state_dict_from_url", lambda *a, **k: linear)
    monkeypatch.setattr(tf, "torchvision_load_pretrained_vgg16", lambda *a, **k: backbone)
    theirs = tf.SampleSimilarityLPIPS("lpips-vgg16")
    a, b = smooth_images(n=3, size=32, seed=0), smooth_images(n=3, size=32, seed=1)
    expected = theirs((a * 255).round(), (b * 255).round()).double()
    got = ours((a * 255).round() / 255, (b * 255).round() / 255).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_lpips_loads_torchvision_and_lpips_files_and_grows_with_the_difference(tmp_path):
    backbone, linear = write_lpips_weights(tmp_path, "alex")
    scorer = load_lpips(LpipsConfig(str(backbone), "alex", str(linear)), CPU)
    x = smooth_images(n=2, size=40)
    g = torch.Generator().manual_seed(1)
    values = [scorer((x + s * torch.randn(x.shape, generator=g)).clamp(0, 1), x) for s in (0.0, 0.05, 0.3)]
    assert values[0] == 0.0 and 0 < values[1] < values[2]
    state = torch.load(backbone, weights_only=True)
    assert torch.equal(scorer.model.net[0].weight, state["features.0.weight"])
    y = smooth_images(n=2, size=40, seed=5)
    assert scorer(x, y) == pytest.approx(scorer(y, x))


def test_lpips_linear_weights_default_to_the_lpips_package(tmp_path, monkeypatch):
    """Without `linear`, the file the lpips package ships in its wheel is used (found, not imported)."""
    import importlib

    backbone, linear = write_lpips_weights(tmp_path / "w", "alex")
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    linear.rename(package / "weights" / "v0.1" / "alex.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    scorer = load_lpips(LpipsConfig(str(backbone), "alex"), CPU)
    assert scorer.model.lins[0].weight.shape == (1, 64, 1, 1)


def test_lpips_says_why_images_are_too_small():
    scorer_alex = load_lpips_from_model(Lpips("alex"))
    q = compare_outputs(torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8) * 0.1, lambda z: torch.sigmoid(z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2)), scorer_alex)
    assert q["lpips"] is None and "16x16 px" in q["lpips_note"] and "at least 31 px" in q["lpips_note"]
    scorer_vgg = load_lpips_from_model(Lpips("vgg"))
    q = compare_outputs(torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8) * 0.1, lambda z: torch.sigmoid(z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2)), scorer_vgg)
    assert q["lpips"] is not None and q["lpips"] >= 0 and q["lpips_note"] is None


def load_lpips_from_model(model):
    from dqar_bench.measure.lpips import LpipsScorer

    return LpipsScorer(model, CPU)


# -- suites -----------------------------------------------------------------------------------

SIGMA_HEAD = """\
name: text-quality
model: pixart-sigma-tiny
sampler: {name: ddim, steps: 4, guidance_scale: 4.5}
seeds: [0, 1]
device: cpu
timing: {warmup: 0, repeats: 1}
baseline: baseline
"""


def embeddings_file(path, prompts, n=2):
    """Caption embeddings for pixart-sigma-tiny (64 wide, up to 6 tokens), with their prompts in the metadata when given."""
    n = len(prompts) if prompts is not None else n
    lengths = [min(2 + len(p.split()), 6) for p in prompts] if prompts is not None else [3] * n
    mask = torch.tensor([[1.0] * k + [0.0] * (6 - k) for k in lengths])
    tensors = {"prompt_embeds": torch.randn(n, 6, 64, generator=torch.Generator().manual_seed(0)), "prompt_attention_mask": mask,
               "negative_prompt_embeds": torch.zeros(1, 6, 64), "negative_prompt_attention_mask": torch.tensor([[1.0] + [0.0] * 5])}
    save_file(tensors, str(path), metadata={"prompts": json.dumps(prompts)} if prompts is not None else None)
    return path


@pytest.mark.slow
def test_clip_and_lpips_reach_the_records_and_results_csv(tmp_path, clip_dir, capsys):
    backbone, linear = write_lpips_weights(tmp_path / "lpips", "vgg")
    captions = embeddings_file(tmp_path / "captions.safetensors", PROMPTS[:3])
    suite = tmp_path / "suite.yaml"
    suite.write_text(SIGMA_HEAD + f"prompt_embeddings: {captions}\n"
                     f"quality: {{clip: {{weights: {clip_dir}}}, lpips: {{net: vgg, backbone: {backbone}, linear: {linear}}}}}\n"
                     "cases:\n  - name: baseline\n  - name: interval\n    gate: {name: interval, every: 2}\n")
    out = tmp_path / "run"
    assert main(["run", str(suite), "-o", str(out)]) == 0
    records = {r.case: r for r in RunDir(out).records()}
    for name in ("baseline", "interval"):
        clip = records[name].clip
        assert clip["n"] == 6 and 0 <= clip["clip_score"] <= 100 and clip["weights"] == str(clip_dir)
    assert records["interval"].quality["lpips"] > 0 and records["interval"].quality["lpips_note"] is None
    assert records["interval"].clip["clip_score"] != records["baseline"].clip["clip_score"]
    rows = {r["case"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert float(rows["interval"]["clip_score"]) == pytest.approx(records["interval"].clip["clip_score"])
    assert float(rows["interval"]["lpips"]) == pytest.approx(records["interval"].quality["lpips"])
    table = (out / "table.md").read_text()
    assert "CLIP score" in table and "LPIPS" in table
    assert "CLIP score" in (out / "report.html").read_text()


def test_a_prompt_file_gives_the_prompts(tmp_path, registry):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.txt").write_text("# a comment\n\n  a red cat  \nthe dog\n# another\nblue\n")
    sub = tmp_path / "suites"
    sub.mkdir()
    path = sub / "s.yaml"
    path.write_text(SIGMA_HEAD + "prompts: {file: ../prompts/p.txt, count: 2}\ncases:\n  - name: baseline\n")
    suite = load_suite(path, registry)
    assert suite.prompts == ["a red cat", "the dog"] and suite.batch == 2 and suite.prompt_texts == ["a red cat", "the dog"]


def test_the_shipped_prompt_file_reads():
    from pathlib import Path

    from dqar_bench.model.prompt_file import read_prompts

    prompts = read_prompts(Path(__file__).resolve().parent.parent / "prompts" / "dqar-prompts-32.txt")
    lengths = sorted(len(p.split()) for p in prompts)
    assert len(prompts) == 32 and len(set(prompts)) == 32
    assert lengths[0] <= 4 and lengths[-1] >= 40  # short and long prompts: tau(p) adapts to the length


def test_the_shipped_text_quality_suite_validates(registry):
    from pathlib import Path

    suite = load_suite(Path(__file__).resolve().parent.parent / "suites" / "text-quality-pixart-512.yaml", registry)
    assert suite.batch == 32 and suite.prompt_texts == suite.prompts and suite.quality.clip and suite.quality.lpips.net == "alex"


@pytest.mark.parametrize("prompts_key, fragment", [
    ("prompts: {file: missing.txt}", "does not exist"),
    ("prompts: {file: empty.txt}", "holds no prompts"),
    ("prompts: {file: p.txt, count: 9}", "has 3 prompts; give a count in 1..3"),
    ("prompts: {file: p.txt, first: 2}", "unknown field 'prompts.first'"),
])
def test_prompt_file_problems_are_one_line(tmp_path, prompts_key, fragment, capsys):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    path = tmp_path / "s.yaml"
    path.write_text(SIGMA_HEAD + prompts_key + "\ncases:\n  - name: baseline\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and fragment in err and "Traceback" not in err


def clip_suite(tmp_path, clip_weights, text="prompt_embeddings: {captions}"):
    captions = embeddings_file(tmp_path / "captions.safetensors", PROMPTS[:2])
    path = tmp_path / "s.yaml"
    path.write_text(SIGMA_HEAD + text.format(captions=captions) + f"\nquality: {{clip: {{weights: {clip_weights}}}}}\ncases:\n  - name: baseline\n")
    return path


def test_validate_accepts_a_clip_checkpoint(tmp_path, clip_dir, capsys):
    assert main(["validate", str(clip_suite(tmp_path, clip_dir))]) == 0


def _break(folder, how):
    import shutil

    broken = folder.parent / f"broken-{how}"
    shutil.copytree(folder, broken)
    if how == "no-weights":
        (broken / "model.safetensors").unlink()
    elif how == "no-tokenizer":
        for name in ("vocab.json", "merges.txt", "tokenizer.json"):
            (broken / name).unlink(missing_ok=True)
    elif how == "not-clip":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    return broken


@pytest.mark.parametrize("how, fragment", [
    ("missing", "is not a folder"),
    ("no-weights", "has no weights"),
    ("no-tokenizer", "has no tokenizer"),
    ("not-clip", "is a 't5' model, not 'clip'"),
])
def test_validate_catches_a_missing_or_broken_clip_checkpoint(tmp_path, clip_dir, how, fragment, capsys):
    weights = tmp_path / "nowhere" if how == "missing" else _break(clip_dir, how)
    path = clip_suite(tmp_path, weights)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "quality.clip.weights" in err and fragment in err and "Traceback" not in err


def test_validate_names_the_text_extra_when_transformers_is_missing(tmp_path, clip_dir, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    assert main(["validate", str(clip_suite(tmp_path, clip_dir))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dqar-bench[text]" in err


@pytest.mark.parametrize("text, fragment", [
    ("prompt_lengths: [4, 8]", "'prompt_lengths' captions are synthetic embeddings with no text"),
    ("prompt_embeddings: {captions}.bare", "carries no prompts in its metadata"),
])
def test_clip_needs_prompt_text(tmp_path, clip_dir, text, fragment, capsys):
    embeddings_file(tmp_path / "captions.safetensors.bare", None)
    path = clip_suite(tmp_path, clip_dir, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quality.clip" in err and fragment in err


def test_clip_on_a_class_conditioned_model_is_refused(tmp_path, clip_dir, registry):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nmodel: dit-tiny\nclass_labels: [1]\ndevice: cpu\nquality: {{clip: {{weights: {clip_dir}}}}}\ncases:\n  - name: baseline\n")
    with pytest.raises(SuiteError, match="class-conditioned and CLIP score compares images with prompts"):
        load_suite(path, registry)


def test_embeddings_prompts_must_match_the_captions(tmp_path, registry):
    file = embeddings_file(tmp_path / "c.safetensors", PROMPTS[:2])
    save_file(load_file(str(file)), str(file), metadata={"prompts": json.dumps(PROMPTS[:3])})
    path = tmp_path / "s.yaml"
    path.write_text(SIGMA_HEAD + f"prompt_embeddings: {file}\ncases:\n  - name: baseline\n")
    with pytest.raises(SuiteError, match="holds 2 captions but its metadata names 3 prompts"):
        load_suite(path, registry)


@pytest.mark.parametrize("lpips, fragment", [
    ("{backbone: NOPE}", "field 'quality.lpips.backbone': no file at"),
    ("{backbone: BACKBONE, linear: NOPE}", "field 'quality.lpips.linear': no file at"),
    ("{backbone: BACKBONE, net: squeeze, linear: LINEAR}", "unknown net 'squeeze'"),
    ("{linear: LINEAR}", "field 'quality.lpips.backbone' is missing"),
    ("{backbone: EVIL, linear: LINEAR}", "is refused"),
])
def test_validate_catches_missing_or_unsafe_lpips_weights(tmp_path, lpips, fragment, capsys):
    import pickle

    backbone, linear = write_lpips_weights(tmp_path / "w", "alex")
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    evil.write_bytes(pickle.dumps(Boom()))
    value = lpips.replace("NOPE", str(tmp_path / "nope.pth")).replace("BACKBONE", str(backbone)).replace("LINEAR", str(linear)).replace("EVIL", str(evil))
    path = tmp_path / "s.yaml"
    path.write_text(SIGMA_HEAD + f"prompt_lengths: [4]\nquality: {{lpips: {value}}}\ncases:\n  - name: baseline\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and fragment in err and "Traceback" not in err


def test_load_clip_never_reaches_for_the_hub(tmp_path):
    with pytest.raises(DqarError, match="is not a folder"):
        load_clip(tmp_path / "openai" / "clip-vit-large-patch14", CPU)
