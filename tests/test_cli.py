"""The `pruning-course` command on a tiny model: the JSON contract, save/reload, and bad input."""

import json

import pytest




TINY = ["--model", "tiny-llama", "--seqlen", "64", "--max-eval-windows", "4", "--quiet"]


@pytest.mark.parametrize("method,extra", [("magnitude", ["--sparsity", "0.5"]), ("wanda", ["--pattern", "2:4"]),
                                          ("sparsegpt", ["--sparsity", "0.6"])])
def test_prune_writes_the_documented_json(run, tmp_path, method, extra):
    out = tmp_path / "out.json"
    code, stdout, _ = run("prune", "--method", method, *extra, "--calib-samples", "4", "--eval", "--json", str(out), *TINY)
    assert code == 0
    record = json.loads(out.read_text())
    for key in ("method", "pattern", "sparsity", "ppl", "seqlen", "eval_tokens", "calib_samples", "prune_seconds", "peak_rss_mb"):
        assert key in record, key
    assert record["method"] == method and record["seqlen"] == 64 and record["eval_tokens"] == 4 * 64
    assert abs(record["sparsity"] - (0.6 if method == "sparsegpt" else 0.5)) < 0.01
    assert record["calib_samples"] == (0 if method == "magnitude" else 4)
    assert record["pattern"] == ("2:4" if method == "wanda" else "unstructured")
    assert method in stdout


def test_prune_with_owl_records_the_layerwise_sparsities(run, tmp_path):
    out = tmp_path / "owl.json"
    code, _, _ = run("prune", "--method", "wanda", "--sparsity", "0.7", "--owl", "--calib-samples", "4", "--json", str(out), *TINY)
    assert code == 0
    record = json.loads(out.read_text())
    blocks = record["block_sparsities"]
    assert len(blocks) == len(record["outlier_ratios"]) == 2
    assert sum(blocks) / 2 == pytest.approx(0.7) and max(blocks) - min(blocks) == pytest.approx(0.16)
    assert record["owl_m"] == 5.0 and abs(record["sparsity"] - 0.7) < 0.02


def test_quantize_saves_a_compressed_file_that_eval_reloads_exactly(run, tmp_path):
    saved, first, second = tmp_path / "q.safetensors", tmp_path / "a.json", tmp_path / "b.json"
    assert run("quantize", "--bits", "4", "--group-size", "32", "--prune", "wanda", "--sparsity", "0.5", "--calib-samples", "4",
               "--eval", "--save", str(saved), "--json", str(first), *TINY)[0] == 0
    record = json.loads(first.read_text())
    assert record["method"] == "wanda+gptq" and abs(record["sparsity"] - 0.5) < 0.01
    assert record["bytes_on_disk"] == saved.stat().st_size and record["bits_per_linear_weight"] < 8
    assert run("eval", "--model", str(saved), "--json", str(second), *TINY[2:])[0] == 0
    reloaded = json.loads(second.read_text())
    assert reloaded["ppl"] == pytest.approx(record["ppl"], rel=1e-5) and abs(reloaded["sparsity"] - 0.5) < 0.01


def test_saved_model_reloads_and_evaluates_with_its_sparsity(run, tmp_path):
    saved, first, second = tmp_path / "pruned", tmp_path / "a.json", tmp_path / "b.json"
    assert run("prune", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "4", "--eval",
               "--json", str(first), "--save", str(saved), *TINY)[0] == 0
    code, stdout, _ = run("eval", "--model", str(saved), "--json", str(second), *TINY[2:])
    assert code == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["sparsity"] == pytest.approx(a["sparsity"]) and b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)


def test_compare_prints_the_table_and_plots(run, tmp_path):
    out, plot = tmp_path / "c.json", tmp_path / "c.png"
    code, stdout, _ = run("compare", "--calib-samples", "4", "--json", str(out), "--plot", str(plot), *TINY)
    assert code == 0
    records = json.loads(out.read_text())["results"]
    assert [(r["method"], r["pattern"]) for r in records] == [
        ("dense", "dense"), ("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
        ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4")]
    assert records[0]["sparsity"] == 0 and all(abs(r["sparsity"] - 0.5) < 0.01 for r in records[1:])
    assert plot.stat().st_size > 1000 and "sparsegpt" in stdout


@pytest.mark.parametrize("argv,message", [
    (["prune", "--method", "wanda", "--sparsity", "1.5"], "sparsity must be in (0, 1)"),
    (["prune", "--method", "wanda", "--sparsity", "50"], "did you mean a fraction"),
    (["prune", "--method", "wanda", "--pattern", "4:2"], "0 < N < M"),
    (["prune", "--method", "wanda", "--pattern", "2:5"], "multiple of 5"),
    (["prune", "--method", "wanda", "--sparsity", "0.7", "--pattern", "2:4"], "keeps 2 of every 4"),
    (["prune", "--method", "obs", "--sparsity", "0.5"], "unknown pruning method 'obs'"),
    (["prune", "--method", "wanda"], "give a sparsity"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "0"], "--calib-samples must be a positive"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--model", "no-such-model"], "no-such-model"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--dataset", "no-such-corpus"], "no-such-corpus"),
    (["compare", "--methods", "wanda,obs"], "unknown method 'obs'"),
    (["prune", "--method", "wanda", "--pattern", "2:4", "--owl"], "cannot be combined with --pattern"),
    (["quantize", "--bits", "5"], "bits must be one of 2, 3, 4, 8"),
    (["quantize", "--group-size", "48"], "does not divide the input width"),
    (["quantize", "--sparsity", "0.5"], "need --prune METHOD"),
    (["quantize", "--prune", "wanda", "--pattern", "2:5"], "multiple of 5"),
    (["prune", "--method", "wanda", "--sparsity", "0.95", "--owl", "--owl-lambda", "0.2"], "too large for target sparsity"),
])
def test_bad_input_gets_a_clear_error_and_exit_status_2(run, argv, message, tmp_path):
    out = tmp_path / "never.json"
    model = [] if "--model" in argv else ["--model", "tiny-llama"]
    code, _, err = run(*argv, *model, "--seqlen", "64", "--quiet", "--json", str(out))
    assert code == 2
    assert message in err
    assert not out.exists()


def test_bad_seqlen_is_a_usage_error(run):
    with pytest.raises(SystemExit) as exit_info:
        run("prune", "--method", "wanda", "--sparsity", "0.5", "--seqlen", "0")
    assert exit_info.value.code == 2
