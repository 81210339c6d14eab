"""The HTML report: built from a run directory alone, every case shown, reuse maps that add up.

Most tests read the report of one small run made once per session (`report_run` in conftest).
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import RunDir
from tests.conftest import REPORT_SUITE as SUITE

STEPS, BLOCKS, CALLS = 6, 4, 2  # dit-tiny has 4 blocks; the map counts the scored calls, one per seed (2)


def _figures(page: str, cls: str) -> list[dict[str, str]]:
    """Attributes of every <figure class="cls ..."> in the page."""
    out = []
    for tag in re.findall(r"<figure ([^>]*)>", page):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if cls in attrs.get("class", "").split():
            out.append(attrs)
    return out


def _row(page: str, case: str) -> str:
    match = re.search(rf'<tr [^>]*data-case="{re.escape(case)}">(.*?)</tr>', page, re.S)
    assert match, f"no summary row for {case}"
    return match.group(1)


def remote_resources(page: str) -> list[str]:
    """Every src / href / url() in the page that points off the machine (http, https, protocol-relative)."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", page, re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')\s]+)""", page, re.I)
    refs += re.findall(r"""@import\s+["']([^"']+)""", page, re.I)
    return [r for r in refs if re.match(r"(https?:)?//", r.strip(), re.I)]


def test_the_run_writes_its_report_and_says_where(report_run):
    run, records, page, printed = report_run
    assert f"report: {run.path / 'report.html'}" in printed
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "small-report" in page and "a small run for the report tests" in page


def test_every_case_has_a_summary_row_failed_and_unsupported_with_their_reasons(report_run):
    _, records, page, _ = report_run
    rows = re.findall(r'<tr [^>]*data-case="([^"]+)"', page)
    assert sorted(rows) == sorted(records)  # every case, once
    failed = [c for c, r in records.items() if r.status == "failed"]
    unsupported = [c for c, r in records.items() if r.status == "unsupported"]
    assert failed and unsupported
    for case in failed:
        row = _row(page, case)
        assert 'class="badge failed"' in row and "RuntimeError: part exploded" in row
    for case in unsupported:
        row = _row(page, case)
        assert 'class="badge unsupported"' in row and "unsupported in cudagraph: needs CUDA" in row
    iv = _row(page, next(c for c in records if c.startswith("iv")))
    assert 'title="every other step"' in iv  # the case's description
    assert "interval(every=2)" in iv and "50.0%" in iv  # parts and reuse


def test_reuse_maps_add_up_to_the_recorded_reuse(report_run):
    _, records, page, _ = report_run
    maps = {f["data-case"]: f for f in _figures(page, "rmap")}
    with_parts = [c for c, r in records.items() if r.status == "ok" and r.parts]
    assert sorted(maps) == sorted(with_parts)  # the untouched baseline has none
    for case in with_parts:
        record = records[case]
        assert record.reuse_map_calls == CALLS
        assert len(record.reuse_map) == STEPS and all(len(row) == BLOCKS for row in record.reuse_map)
        assert sum(map(sum, record.reuse_map)) == record.reused
        assert int(maps[case]["data-reused"]) == record.reused and int(maps[case]["data-calls"]) == CALLS
        # the drawn cells: one per (block, step), their counts sum to the recorded reuse
        figure = page[page.index(f'data-case="{case}" data-reused'):]
        figure = figure[: figure.index("</figure>")]
        counts = [int(n) for n in re.findall(r'title="step \d+, block \d+: (\d+) of \d+ calls"', figure)]
        assert len(counts) == STEPS * BLOCKS and sum(counts) == record.reused
    interval = records[next(c for c in records if c.startswith("iv"))]
    assert interval.reused > 0
    assert interval.reuse_map == [[CALLS if step % 2 else 0] * BLOCKS for step in range(STEPS)]


def test_one_picture_per_case_and_seed(report_run):
    _, records, page, _ = report_run
    figures = _figures(page, "sample")
    shown = sorted((f["data-case"], int(f["data-seed"])) for f in figures)
    ok = [c for c, r in records.items() if r.status == "ok"]
    assert shown == sorted((c, s) for c in ok for s in (0, 1))
    diffs = sorted((f["data-diff"], int(f["data-seed"])) for f in _figures(page, "diffmap"))
    assert diffs == sorted((c, s) for c in ok if not c.startswith("baseline") for s in (0, 1))  # against the baseline
    not_shown = re.search(r"Not shown: (.*?)\.</p>", page).group(1)
    for case, record in records.items():
        if record.status != "ok":
            assert case in not_shown
    # dit-tiny has 4-channel latents and no VAE: each picture is a row of 4 channel panels per batch item
    first = re.search(r'data-case="[^"]+" data-seed="0"><img class="(\w+)" src="data:image/png;base64,([^"]+)"', page)
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(first.group(2))))
    assert image.size == (4 * 8 + 3, 2 * 8 + 1)  # 4 channels across, 2 labels down, 1 px gaps


def test_the_page_fetches_nothing(report_run):
    page = report_run[2]
    assert remote_resources(page) == []
    assert "data:image/png;base64," in page
    # the check itself finds what it must
    assert remote_resources('<img src="https://cdn.example/x.png"><link href=//fonts.example/a.css>') == [
        "https://cdn.example/x.png", "//fonts.example/a.css"]
    assert remote_resources("<style>body { background: url('http://x/y.png') }</style>") == ["http://x/y.png"]


def test_report_command_rebuilds_and_compares_runs(report_run, tmp_path, capsys):
    import shutil

    run, records = report_run[0], report_run[1]
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    out = tmp_path / "both.html"
    assert main(["report", str(run.path), str(other), "-o", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    page = out.read_text()
    labels = re.findall(r'<tr [^>]*data-case="([^"]+)"', page)
    assert sorted(labels) == sorted(f"{name}: {case}" for name in ("run", "other") for case in records)
    assert len(_figures(page, "rmap")) == 2 * len(_figures(report_run[2], "rmap"))
    from dqar_bench.views.report.runs import load_runs

    assert [r.label for r in load_runs([run.path, run.path])] == ["run #1", "run #2"]  # the same run twice
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no records.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "outputs").exists()  # reading a directory creates nothing in it


def test_a_failing_report_never_costs_the_run(write_suite, tmp_path, monkeypatch, capsys):
    import dqar_bench.views.report as report

    def broken(*args, **kwargs):
        raise ValueError("template went missing")

    monkeypatch.setattr(report, "write_report", broken)
    path = write_suite(SUITE.split("cases:")[0] + "cases:\n  - name: baseline\n  - name: iv\n    gate: {name: interval, every: 2}\n")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    assert "report: not written: ValueError: template went missing" in capsys.readouterr().out
    assert [r.status for r in RunDir(tmp_path / "run").records()] == ["ok", "ok"]
    assert (tmp_path / "run" / "table.md").exists()


@pytest.mark.slow
def test_a_model_with_a_vae_keeps_decoded_previews(write_suite, tmp_path, monkeypatch):
    """The report of a VAE model shows the pictures decoded at run time: it never needs the model."""
    from diffusers import AutoencoderKL

    from dqar_bench.runs import suite_model

    real = suite_model.load_model

    def with_vae(*args, **kwargs):
        loaded = real(*args, **kwargs)
        torch.manual_seed(0)
        loaded.vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, sample_size=8,
        ).eval()
        return loaded

    monkeypatch.setattr(suite_model, "load_model", with_vae)
    path = write_suite(SUITE.split("cases:")[0] + "cases:\n  - name: baseline\n  - name: iv\n    gate: {name: interval, every: 2}\n")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    run = RunDir(tmp_path / "run")
    previews, meta = run.load_previews("iv")
    assert meta == {"space": "image"} and sorted(previews) == [0, 1]
    assert previews[0].dtype == torch.uint8 and tuple(previews[0].shape) == (2, 3, 8, 8)
    page = (run.path / "report.html").read_text()
    assert "decoded by the model" in page
    assert len(_figures(page, "sample")) == 4  # two cases x two seeds


def test_video_outputs_are_strips_of_frames(tmp_path):
    """5-D outputs [batch, channels, frames, height, width]: one row of evenly spaced frames per item."""
    from PIL import Image

    from dqar_bench.views.report import write_report
    from dqar_bench.views.report.previews import MAX_FRAMES

    run = RunDir.open(tmp_path / "run", resume=False)
    base = {"suite": "video", "steps": 2, "batch": 2, "seeds": [0], "baseline_case": "baseline", "parts": {},
            "latency_s": [1.0, 1.1, 0.9], "median_s": 1.0, "per_image_s": 0.5, "status": "ok"}
    frames = torch.linspace(-1, 1, 12).view(1, 1, 12, 1, 1).expand(2, 3, 12, 16, 16).contiguous()
    run.append(CaseRecord.from_json({**base, "case": "baseline"}))
    run.save_outputs("baseline", {0: frames})
    run.append(CaseRecord.from_json({**base, "case": "fast", "latency_s": [0.5, 0.6, 0.4], "median_s": 0.5,
                                     "quality": {"psnr_db": 30.0, "space": "latent"}, "parts": {"gate": {"name": "interval", "params": {}}}}))
    run.save_outputs("fast", {0: frames.flip(2)})
    page = write_report([run.path]).read_text()
    pictures = re.findall(r'data-case="[^"]+" data-seed="0"><img class="\w+" src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 2
    image = Image.open(io.BytesIO(base64.b64decode(pictures[0])))
    assert image.size == (MAX_FRAMES * 16 + (MAX_FRAMES - 1), 2 * 16 + 1)
    row = np.asarray(image)[0, ::17, 0]  # the first pixel of each frame: brightening, left to right
    assert (np.diff(row.astype(int)) > 0).all()
    assert "2.00×" in page  # speedup under the picture, from the raw samples


def test_reuse_counts_per_step_and_block():
    from dqar_bench.strategy.strategy import ReuseStats

    stats = ReuseStats()
    stats.begin_call(3, 2)
    stats.count_step(0, [False, False])
    stats.count_step(1, [True, False])
    stats.count_step(2, [True, True])
    stats.begin_call(3, 2)
    stats.count_step(1, [True, True])
    assert stats.reuse_map == [[0, 0], [2, 1], [1, 1]] and stats.calls == 2
    assert sum(map(sum, stats.reuse_map)) == stats.reused == 5 and stats.evaluations == 8
    stats.begin_call(4, 3)  # a longer call widens the map; nothing counted is lost
    assert len(stats.reuse_map) == 4 and all(len(r) == 3 for r in stats.reuse_map)
    assert sum(map(sum, stats.reuse_map)) == 5


@pytest.mark.slow
def test_the_runner_s_report_shows_the_cases_of_the_suite_as_run(tmp_path):
    """A run resumed with a case taken out of its suite keeps that case's record; the report the
    runner writes, like its table, shows only the suite's cases."""
    from pathlib import Path

    from dqar_bench.views.report import write_report

    reference = Path(__file__).resolve().parent.parent / "results" / "ci" / "reference" / "digits-dit"
    everything = write_report([reference], tmp_path / "all.html").read_text()
    some = write_report([reference], tmp_path / "some.html", cases={"baseline", "fora"}).read_text()
    shown = lambda page: set(re.findall(r'data-case="([^"]+)"', page))  # noqa: E731
    assert {"dqar", "fora", "baseline"} <= shown(everything)
    assert shown(some) == {"baseline", "fora"}


def test_runs_of_different_models_stand_side_by_side_each_with_its_own_setting(report_run, tmp_path):
    import json
    import shutil

    run = report_run[0]
    other = tmp_path / "flow"
    shutil.copytree(run.path, other)
    lines = [json.loads(line) for line in (other / "records.jsonl").read_text().splitlines()]
    for record in lines:  # as a run of another model, sampler and number of steps would record
        record["identity"].update(model="digits-flow", sampler="flow-euler", steps=1)
    (other / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "both.html"
    assert main(["report", str(run.path), str(other), "-o", str(out)]) == 0
    page = out.read_text()
    header = page.split("<nav>")[0]
    cards = dict(re.findall(r'<li class="run" data-run="([^"]+)">(.*?)</ul></li>', header, re.S))
    assert set(cards) == {"run", "flow"}
    assert "digits-flow" in cards["flow"] and "flow-euler, 1 step<" in cards["flow"]
    assert "digits-flow" not in cards["run"] and "dit-tiny" in cards["run"] and f"{STEPS} steps" in cards["run"]
    images = page.split('id="images"')[1].split("</section>")[0]
    columns = re.findall(r'<div class="runcol" data-run="([^"]+)"><h4>[^<]*<small>([^<]*)</small>', images)
    assert ("run", f"dit-tiny · ddim, {STEPS} steps") in columns and ("flow", "digits-flow · flow-euler, 1 step") in columns
    reuse = page.split('id="reuse"')[1].split("</section>")[0]
    assert [name for name, _ in re.findall(r'<div class="runcol" data-run="([^"]+)"><h4>[^<]*<small>([^<]*)</small>', reuse)] == ["run", "flow"]


def test_plurals_and_no_cuda_on_a_cpu_run(report_run):
    from dqar_bench.views.report.reuse import reuse_map
    from dqar_bench.views.report.runs import Entry

    page = report_run[2]
    assert f"{CALLS} scored calls" in page
    from dqar_bench.measure.case_record import CaseRecord

    one = Entry(None, CaseRecord(case="iv", identity={}, reuse_map=[[0, 1], [1, 1]], reuse_map_calls=1, reuse_ratio=0.75), {})  # type: ignore[arg-type]
    assert "· 1 scored call<" in reuse_map(one)
    environment = page.split('id="environment"')[1]
    assert "<td>CUDA</td>" not in environment and "<td>cuDNN</td>" not in environment
