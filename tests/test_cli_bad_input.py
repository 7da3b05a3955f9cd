"""The command line never throws work away: bad targets, broken model files, an interrupted save,
a window longer than the model's context, a missing GPU and Ctrl-C each get one line on stderr
(exit status 2, or 130 for an interruption), before any long work where the input allows it, and
leave nothing half-written behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import pruning_course.models as models
from pruning_course.cli import main

TINY = ["--model", "tiny-llama", "--seqlen", "32", "--max-eval-windows", "2", "--quiet"]
PRUNE = ["prune", "--method", "magnitude", "--sparsity", "0.5"]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(models, "load_model", refuse)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A pruned tiny model saved by the CLI (the template the broken copies are made from)."""
    path = tmp_path_factory.mktemp("saved") / "pruned"
    assert main([*PRUNE, "--save", str(path), *TINY]) == 0
    return path


# ---------------------------------------------------------------------------------------------
# targets that cannot be written are refused before anything is loaded
# ---------------------------------------------------------------------------------------------


def _a_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("the user's notes")
    return f


@pytest.mark.parametrize("command,target,message", [
    (PRUNE, lambda t: ["--json", str(_a_file(t) / "out.json")], "is a file, not a folder"),
    (PRUNE, lambda t: ["--json", str(t)], "is a folder; give the name of a file"),
    (PRUNE, lambda t: ["--save", str(_a_file(t))], "is a file; give the name of a folder"),
    (PRUNE, lambda t: ["--save", str(_a_file(t).parent)], "already holds files that are not a saved model"),
    (PRUNE, lambda t: ["--save", str(_a_file(t) / "model")], "is a file, not a folder"),
    (["eval"], lambda t: ["--json", str(_a_file(t) / "deep" / "er" / "out.json")], "is a file, not a folder"),
    (["quantize", "--bits", "4"], lambda t: ["--save", str(_a_file(t) / "q.safetensors")], "is a file, not a folder"),
    (["quantize", "--bits", "4"], lambda t: ["--json", str(t)], "is a folder"),
    (["compare"], lambda t: ["--plot", str(t / "plot.nope")], "picture format"),
    (["compare"], lambda t: ["--plot", str(_a_file(t) / "plot.png")], "is a file, not a folder"),
    (["compare"], lambda t: ["--json", str(_a_file(t) / "c.json")], "is a file, not a folder"),
])
def test_unwritable_targets_are_refused_before_loading(run, tmp_path, no_loading, command, target, message):
    code, out, err = run(*command, *target(tmp_path), *TINY)
    assert code == 2
    assert message in one_line(err)
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["notes.txt"])  # nothing created
    if (tmp_path / "notes.txt").exists():
        assert (tmp_path / "notes.txt").read_text() == "the user's notes"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_refused_before_loading(run, tmp_path, no_loading):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(*PRUNE, "--json", str(locked / "out.json"), *TINY)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot write in" in one_line(err)


def test_results_are_printed_and_kept_when_the_save_fails(run, tmp_path, monkeypatch):
    import pruning_course.cli as cli

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cli, "save_model_dir", disk_full)
    out = tmp_path / "out.json"
    code, stdout, err = run(*PRUNE, "--eval", "--json", str(out), "--save", str(tmp_path / "pruned"), *TINY)
    assert code == 2 and "No space left on device" in one_line(err)
    assert "magnitude" in stdout and "unstructured" in stdout  # the table was printed before the save
    record = json.loads(out.read_text())
    assert record["ppl"] > 0 and "saved_to" not in record
    assert not (tmp_path / "pruned").exists()


# ---------------------------------------------------------------------------------------------
# broken model files
# ---------------------------------------------------------------------------------------------


def _break(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": os.urandom(4096)}[how])


@pytest.mark.parametrize("how,reason", [("truncated", "not fully covered"), ("empty", "header too small"),
                                        ("random", "header too large")])
def test_a_broken_safetensors_in_a_saved_dir_is_named_in_one_line(run, tmp_path, saved_model, how, reason):
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    _break(broken / "model.safetensors", how)
    code, out, err = run("eval", "--model", str(broken), *TINY[2:])
    line = one_line(err)
    assert code == 2 and str(broken / "model.safetensors") in line and reason in line
    assert "save the model again" in line


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_a_broken_compressed_file_is_named_in_one_line(run, tmp_path, how):
    saved = tmp_path / "q.safetensors"
    assert run("quantize", "--bits", "8", "--group-size", "32", "--save", str(saved), *TINY)[0] == 0
    _break(saved, how)
    code, _, err = run("eval", "--model", str(saved), *TINY[2:])
    line = one_line(err)
    assert code == 2 and str(saved) in line and "not a complete safetensors file" in line


@pytest.mark.parametrize("keep,message", [
    ((), "has no config.json"),
    (("config.json",), "has no weights"),
    (("config.json", "model.safetensors", "generation_config.json"), "has no tokenizer"),
])
def test_an_empty_or_half_saved_dir_is_named_in_one_line(run, tmp_path, saved_model, keep, message):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in keep:
        shutil.copy(saved_model / name, partial / name)
    code, _, err = run("eval", "--model", str(partial), *TINY[2:])
    line = one_line(err)
    assert code == 2 and str(partial) in line and message in line
    assert "sentencepiece" not in err


# ---------------------------------------------------------------------------------------------
# an interrupted save leaves no half-written model, and an older model survives it
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def interrupt_tokenizer_save(monkeypatch):
    """Ctrl-C arrives while the tokenizer is written (after the weights: the worst moment)."""
    from transformers import PreTrainedTokenizerBase

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)


def test_an_interrupted_save_leaves_no_model_folder(run, tmp_path, interrupt_tokenizer_save):
    target, out = tmp_path / "pruned", tmp_path / "out.json"
    code, stdout, err = run(*PRUNE, "--json", str(out), "--save", str(target), *TINY)
    assert code == 130 and "interrupted" in one_line(err)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no hidden partial folder either
    assert json.loads(out.read_text())["method"] == "magnitude" and "magnitude" in stdout


def test_an_interrupted_save_keeps_the_model_saved_before(run, tmp_path, saved_model, monkeypatch):
    target = tmp_path / "pruned"
    shutil.copytree(saved_model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, err = run("prune", "--method", "magnitude", "--sparsity", "0.7", "--save", str(target), *TINY)
    assert code == 130
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_a_save_over_an_earlier_model_replaces_it(run, tmp_path, saved_model):
    target = tmp_path / "pruned"
    shutil.copytree(saved_model, target)
    assert run("prune", "--method", "magnitude", "--sparsity", "0.7", "--save", str(target), *TINY)[0] == 0
    out = tmp_path / "e.json"
    assert run("eval", "--model", str(target), "--json", str(out), *TINY[2:])[0] == 0
    assert json.loads(out.read_text())["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "pruned"]


def test_ctrl_c_during_the_work_exits_with_one_line_and_writes_nothing(run, tmp_path, monkeypatch):
    import pruning_course.evaluate as evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "perplexity", interrupted)
    out = tmp_path / "out.json"
    code, _, err = run(*PRUNE, "--eval", "--json", str(out), "--save", str(tmp_path / "m"), *TINY)
    assert code == 130 and "interrupted" in one_line(err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# windows beyond the context, devices that are not there, paths that do not exist
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [PRUNE + ["--eval"], ["eval"], ["compare"], ["quantize", "--bits", "4"]])
def test_seqlen_beyond_the_context_is_refused_before_the_work(run, tmp_path, monkeypatch, command):
    import pruning_course.data as data

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was tokenized before the window length was checked")
    monkeypatch.setattr(data, "load_token_splits", refuse)
    code, _, err = run(*command, "--model", "tiny-llama", "--seqlen", "100000", "--quiet", "--json", str(tmp_path / "o.json"))
    line = one_line(err)
    assert code == 2 and "--seqlen 100000 is beyond the context of tiny-llama (1024 tokens)" in line
    assert not (tmp_path / "o.json").exists()


def test_gpt2_context_is_read_from_n_positions(run):
    code, _, err = run("eval", "--model", "tiny-gpt2", "--seqlen", "1025", "--quiet")
    assert code == 2 and "(1024 tokens)" in one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [PRUNE, ["eval"], ["quantize"], ["compare"]])
def test_cuda_without_a_gpu_is_one_line(run, no_loading, command):
    code, _, err = run(*command, "--device", "cuda", *TINY)
    line = one_line(err)
    assert code == 2 and "no CUDA GPU" in line and "--device cpu" in line


def test_an_unknown_device_is_one_line(run, no_loading):
    code, _, err = run("eval", "--device", "gpu0", *TINY[2:], "--model", "tiny-llama")
    assert code == 2 and "is not a device torch knows" in one_line(err)


@pytest.mark.parametrize("name", ["runs/pruned-model", "./pruned", "../nowhere/model", "pruned/", "out/q.safetensors"])
def test_a_missing_local_path_is_not_tried_on_the_hub(run, tmp_path, monkeypatch, name):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was sent to the Hub")
    monkeypatch.setattr(models, "_from_hub", no_hub)
    code, _, err = run("eval", "--model", name, "--quiet")
    assert code == 2 and "does not exist" in one_line(err)


def test_an_org_name_id_still_goes_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(models, "_from_hub", lambda hub_id, dtype: asked.append(hub_id) or (_ for _ in ()).throw(
        models.ModelUnavailableError("offline")))
    with pytest.raises(models.ModelUnavailableError):
        models.load_model("HuggingFaceTB/SmolLM2-135M", progress=False)
    assert asked == ["HuggingFaceTB/SmolLM2-135M"]


def test_saving_never_replaces_a_folder_of_other_files(tmp_path):
    from pruning_course.structured.saving import save_pruned
    from pruning_course.testing import tiny_model

    model, tokenizer = tiny_model("llama")
    (tmp_path / "notes.txt").write_text("the user's notes")
    with pytest.raises(ValueError, match="already holds files that are not a saved model"):
        save_pruned(model, tmp_path, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    saved = save_pruned(model, tmp_path / "model", tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes.txt"] and (saved / "config.json").is_file()


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only :class:`InputError` (and file/environment errors) become one line with status 2: a plain
    ValueError from inside the package is a bug, and must reach the user with its traceback."""
    import pruning_course.methods as methods
    from pruning_course.errors import InputError

    def bad_input(*args, **kwargs):
        raise InputError("sparsity must be in (0, 1); got 1.5")

    monkeypatch.setattr(methods, "prune_model", bad_input)
    assert main([*PRUNE, *TINY]) == 2
    assert one_line(capsys.readouterr().err) == "pruning-course prune: error: sparsity must be in (0, 1); got 1.5"

    def bug(*args, **kwargs):
        raise ValueError("too many values to unpack (expected 2)")

    monkeypatch.setattr(methods, "prune_model", bug)
    with pytest.raises(ValueError, match="too many values to unpack"):
        main([*PRUNE, *TINY])
