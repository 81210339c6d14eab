"""Weights files are read as data: a pickle that would run code is refused before anything runs."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from dqar_bench.cli import main
from dqar_bench.core.errors import DqarError
from dqar_bench.core.weights import check_weights_file, weights_only_loads
from tests.conftest import SMALL_SUITE_HEAD


class Payload:
    """Unpickling this creates the file `marker`: code that runs when the weights load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path):
    """A .pth that holds real tensors and a payload, as torch.save writes it; and its marker."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": Payload(marker)}, path)
    return path, marker


def test_a_pickle_that_would_run_code_is_refused_in_one_line(evil, tmp_path):
    path, marker = evil
    with pytest.raises(DqarError) as err:
        check_weights_file(path, "option --x")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"option --x: {path} is refused")
    assert "(it calls io.open)" in message and "can run code" in message  # the refused call, named (issue 23)
    raw = tmp_path / "raw.pkl"  # a bare pickle, not a torch.save zip
    raw.write_bytes(pickle.dumps({"w": Payload(marker)}))
    with pytest.raises(DqarError, match="is refused"):
        check_weights_file(raw, "option --x")
    assert not marker.exists()


def test_plain_weights_pass_and_damaged_files_are_refused(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pth")
    save_file({"w": torch.ones(3)}, str(tmp_path / "plain.safetensors"))
    save_file({"w": torch.ones(3)}, str(tmp_path / "named-like-a-pickle.pth"))
    for name in ("plain.pth", "plain.safetensors", "named-like-a-pickle.pth"):
        check_weights_file(tmp_path / name, "x")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(DqarError, match="not a readable safetensors file"):
        check_weights_file(tmp_path / "junk.safetensors", "x")
    with pytest.raises(DqarError, match="no file at"):
        check_weights_file(tmp_path / "missing.pth", "x")


def test_library_loads_inside_are_weights_only_even_when_they_ask_otherwise(evil):
    path, marker = evil
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)  # what torch-fidelity does with an Inception path
    assert not marker.exists()


def test_validate_refuses_evil_inception_weights_before_anything_runs(evil, write_suite, capsys):
    path, marker = evil
    suite = write_suite(SMALL_SUITE_HEAD + f"quality: {{fid: 8, inception_weights: {path}}}\ncases:\n  - name: baseline\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quality.inception_weights" in err and "is refused" in err
    assert not marker.exists()


def test_run_refuses_evil_weights_from_the_command_line_before_any_run_directory(evil, write_suite, tmp_path, capsys):
    path, marker = evil
    suite = write_suite(SMALL_SUITE_HEAD + "quality: {fid: 8}\ncases:\n  - name: baseline\n")
    out = tmp_path / "run"
    assert main(["run", str(suite), "-o", str(out), "--inception-weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is refused" in err
    assert not marker.exists() and not out.exists()


def test_fidelity_checks_the_file_it_is_handed(evil):
    from dqar_bench.measure.fidelity import Fidelity

    path, marker = evil
    with pytest.raises(DqarError, match="is refused"):
        Fidelity("baseline-images-not-needed", "inception-v3-compat", str(path))
    assert not marker.exists()


def test_a_pickle_as_policy_weights_is_refused_without_running(evil, write_suite, capsys):
    path, marker = evil
    suite = write_suite(SMALL_SUITE_HEAD + f"cases:\n  - name: baseline\n  - name: p\n    gate: {{name: policy, weights: {path}}}\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case 'p'" in err and "policy weights file" in err
    assert not marker.exists()
