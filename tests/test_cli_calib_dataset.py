"""``--dataset`` and ``--calib-dataset`` on the command line: separate corpora, mixes, one-line errors before loading,
and the corpora with their versions in every JSON record."""

from __future__ import annotations

import json
import platform

import pytest
import torch

import pruning_course.data as data
import pruning_course.evaluate as evaluate
import pruning_course.models as models

TINY = ["--model", "tiny-llama", "--seqlen", "16", "--max-eval-windows", "2", "--quiet"]
RANGES = {"wiki-sample": (0, 100), "python-stdlib": (100, 200)}  # token ids of each fake corpus


@pytest.fixture
def fake_corpora(monkeypatch):
    """Each corpus is a few hundred tokens from its own id range; returns the names tokenized, in order."""
    asked = []

    def load_token_splits(tokenizer, name="wiki-sample", cache=True):
        asked.append(name)
        low, high = RANGES[name]
        ids = torch.randint(low, high, (400,), generator=torch.Generator().manual_seed(low))
        return {"train": ids, "validation": ids[:100], "test": ids[:100]}

    monkeypatch.setattr(data, "load_token_splits", load_token_splits)
    return asked


@pytest.fixture
def calibration_spy(monkeypatch):
    """The calibration windows each prune_and_measure call received."""
    seen = []
    real = evaluate.prune_and_measure

    def spy(model, adapter, method, sparsity=None, pattern=None, windows=None, **kwargs):
        seen.append(windows)
        return real(model, adapter, method, sparsity, pattern, windows, **kwargs)

    monkeypatch.setattr(evaluate, "prune_and_measure", spy)
    return seen


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(models, "load_model", refuse)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def sources(windows) -> list[str]:
    return ["wiki-sample" if w < 100 else "python-stdlib" for w in windows[:, 0].tolist()]


def test_calibration_defaults_to_the_evaluation_corpus(run, tmp_path, fake_corpora, calibration_spy):
    out = tmp_path / "r.json"
    code, _, err = run("prune", "--method", "wanda", "--sparsity", "0.5", "--dataset", "python-stdlib",
                       "--calib-samples", "3", "--eval", "--json", str(out), *TINY)
    assert code == 0, err
    assert sources(calibration_spy[0]) == ["python-stdlib"] * 3
    assert fake_corpora == ["python-stdlib"]  # tokenized once for calibration and evaluation
    record = json.loads(out.read_text())
    version = f"python {platform.python_version()}"
    assert (record["dataset"], record["dataset_version"]) == ("python-stdlib", version)
    assert (record["calib_dataset"], record["calib_dataset_version"]) == ("python-stdlib", version)


def test_a_mix_calibrates_on_both_and_evaluates_on_one(run, tmp_path, fake_corpora, calibration_spy):
    out = tmp_path / "r.json"
    code, _, err = run("prune", "--method", "sparsegpt", "--sparsity", "0.5", "--calib-samples", "5",
                       "--calib-dataset", "wiki-sample+python-stdlib", "--dataset", "python-stdlib",
                       "--eval", "--json", str(out), *TINY)
    assert code == 0, err
    assert sources(calibration_spy[0]) == ["wiki-sample"] * 3 + ["python-stdlib"] * 2
    assert sorted(fake_corpora) == ["python-stdlib", "wiki-sample"]
    record = json.loads(out.read_text())
    assert record["calib_dataset"] == "wiki-sample+python-stdlib"
    assert record["calib_dataset_version"] == data.dataset_version("wiki-sample+python-stdlib")
    assert record["dataset"] == "python-stdlib" and record["ppl"] > 0


def test_magnitude_pruning_records_no_calibration_corpus(run, tmp_path, fake_corpora):
    out = tmp_path / "r.json"
    code, _, err = run("prune", "--method", "magnitude", "--sparsity", "0.5", "--calib-dataset", "python-stdlib",
                       "--json", str(out), *TINY)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["calib_dataset"] is None and fake_corpora == []  # no --eval, no calibration: nothing tokenized


def test_compare_calibrates_every_method_on_the_calib_corpus(run, tmp_path, fake_corpora, calibration_spy):
    out = tmp_path / "c.json"
    code, stdout, err = run("compare", "--methods", "wanda", "--patterns", "unstructured", "--calib-samples", "2",
                            "--calib-dataset", "python-stdlib", "--json", str(out), *TINY)
    assert code == 0, err
    assert all(sources(w) == ["python-stdlib"] * 2 for w in calibration_spy)
    summary = json.loads(out.read_text())
    assert summary["dataset"] == "wiki-sample" and summary["calib_dataset"] == "python-stdlib"
    assert summary["dataset_version"].startswith("gensim ") and summary["calib_dataset_version"].startswith("python ")
    assert "calibration windows of python-stdlib" in stdout


def test_quantize_gptq_records_the_calibration_corpus(run, tmp_path, fake_corpora):
    out = tmp_path / "q.json"
    code, _, err = run("quantize", "--bits", "4", "--group-size", "32", "--calib-samples", "2",
                       "--calib-dataset", "python-stdlib+wiki-sample", "--json", str(out), *TINY)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["calib_dataset"] == "python-stdlib+wiki-sample" and record["calib_samples"] == 2
    assert fake_corpora == ["python-stdlib", "wiki-sample"]


def test_eval_records_the_python_version(run, tmp_path, fake_corpora):
    out = tmp_path / "e.json"
    code, _, err = run("eval", "--dataset", "python-stdlib", "--json", str(out), *TINY)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["dataset_version"] == f"python {platform.python_version()}" and "calib_dataset" not in record


@pytest.mark.parametrize("command", [["prune", "--method", "wanda", "--sparsity", "0.5"], ["quantize"], ["compare"]])
@pytest.mark.parametrize("calib,message", [
    ("python_stdlib", "unknown corpus 'python_stdlib': use one of wiki-sample, python-stdlib, wikitext2"),
    ("wiki-sample+code", "unknown corpus 'code': use one of wiki-sample, python-stdlib"),
    ("wiki-sample+", "empty part"),
    ("python-stdlib+python-stdlib", "names a corpus twice"),
])
def test_a_bad_calib_dataset_is_one_line_before_loading(run, no_loading, command, calib, message):
    code, _, err = run(*command, "--calib-dataset", calib, *TINY)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("command", [["eval"], ["prune", "--method", "magnitude", "--sparsity", "0.5"], ["compare"]])
def test_a_bad_dataset_is_one_line_before_loading(run, no_loading, command):
    code, _, err = run(*command, "--dataset", "stdlib", *TINY)
    assert code == 2 and "unknown corpus 'stdlib': use one of wiki-sample, python-stdlib" in one_line(err)


def test_a_mix_is_not_an_evaluation_corpus(run, no_loading):
    code, _, err = run("eval", "--dataset", "wiki-sample+python-stdlib", *TINY)
    assert code == 2 and "a mix is for --calib-dataset" in one_line(err)


def test_too_few_windows_for_a_mix_is_one_line_before_loading(run, no_loading):
    code, _, err = run("prune", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "1",
                       "--calib-dataset", "wiki-sample+python-stdlib", *TINY)
    assert code == 2 and "cannot be shared among the 2 corpora" in one_line(err)
