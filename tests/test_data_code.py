"""The code corpus (python-stdlib), its split by path, hub code datasets (offline), and calibration mixes."""

from __future__ import annotations

import hashlib
import platform

import pytest
import torch

from pruning_course import data
from pruning_course.testing import tiny_tokenizer

FAKE_STDLIB = {
    "os.py": "import sys\n",
    "json/__init__.py": "def dumps(obj):\n    return str(obj)\n",
    "json/decoder.py": "class JSONDecoder:\n    pass\n",
    "asyncio/futures.py": "class Future:\n    pass\n",
    "turtle.py": "def forward(distance):\n    return distance\n",
    "notes.txt": "not python",
    "test/test_os.py": "def test_os(): pass\n",
    "ctypes/test/test_x.py": "def test_x(): pass\n",
    "lib2to3/tests/data/bom.py": "x = 1\n",
    "idlelib/idle_test/test_y.py": "def test_y(): pass\n",
    "idlelib/editor.py": "class Editor: pass\n",
    "site-packages/numpy/__init__.py": "numpy = 1\n",
    "__pycache__/os.cpython-311.py": "cached\n",
    "pydoc_data/topics.py": "topics = {}\n",
    "config-3.11-x86_64-linux-gnu/python-config.py": "build = 1\n",
    "_sysconfigdata__linux_x86_64-linux-gnu.py": "build_time_vars = {}\n",
}
KEPT = ["asyncio/futures.py", "idlelib/editor.py", "json/__init__.py", "json/decoder.py", "os.py", "turtle.py"]


def make_stdlib(root, files=FAKE_STDLIB):
    for key, text in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --------------------------------------------------------------------------- the protocol


def test_only_library_sources_are_kept_in_sorted_order(tmp_path):
    assert data.python_stdlib_files(make_stdlib(tmp_path)) == KEPT


def test_files_under_the_virtual_environment_are_skipped(tmp_path):
    root = make_stdlib(tmp_path)
    make_stdlib(root / "venv" / "lib", {"requests.py": "import urllib3\n"})
    assert "venv/lib/requests.py" in data.python_stdlib_files(root, skip_under=tmp_path / "elsewhere")
    assert data.python_stdlib_files(root, skip_under=root / "venv") == KEPT


def test_the_running_venv_is_not_in_the_real_stdlib():
    keys = data.python_stdlib_files()
    assert "os.py" in keys and "json/decoder.py" in keys
    assert not any(part in ("test", "tests", "site-packages", "__pycache__", "idle_test")
                   for key in keys for part in key.split("/"))
    assert keys == sorted(keys)


def test_split_of_path_is_the_documented_hash_rule():
    for key in KEPT + [f"pkg/module_{i}.py" for i in range(300)]:
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000
        expected = "test" if bucket < 30 else "validation" if bucket < 60 else "train"
        assert data.split_of_path(key) == expected
    assert data.split_of_path("turtle.py") == "test" and data.split_of_path("os.py") == "train"


def test_the_split_fractions_are_three_three_ninety_four_percent():
    keys = [f"pkg/module_{i}.py" for i in range(20_000)]
    share = {split: sum(data.split_of_path(k) == split for k in keys) / len(keys) for split in data.SPLITS}
    assert share["test"] == pytest.approx(0.03, abs=0.005) and share["validation"] == pytest.approx(0.03, abs=0.005)


def test_splits_join_the_files_of_each_split_in_key_order(tmp_path):
    corpus = data.load_python_stdlib(make_stdlib(tmp_path))
    assert tuple(corpus) == data.SPLITS
    for split in data.SPLITS:
        expected = [FAKE_STDLIB[key] for key in KEPT if data.split_of_path(key) == split]
        assert corpus[split] == "\n\n".join(expected)
    assert FAKE_STDLIB["turtle.py"] in corpus["test"]


def test_adding_a_file_never_moves_another_file(tmp_path):
    before = data.load_python_stdlib(make_stdlib(tmp_path / "a"))
    more = {**FAKE_STDLIB, **{f"extra/m{i}.py": f"value_{i} = {i}\n" for i in range(60)}}
    after = data.load_python_stdlib(make_stdlib(tmp_path / "b", more))
    splits_after = {key: data.split_of_path(key) for key in data.python_stdlib_files(tmp_path / "b")}
    assert {splits_after[key] for key in splits_after if key.startswith("extra/")} == set(data.SPLITS)
    for key in KEPT:
        assert FAKE_STDLIB[key] in after[splits_after[key]]
    for split in data.SPLITS:  # the old files keep their split and their order within it
        old = [FAKE_STDLIB[k] for k in KEPT if splits_after[k] == split]
        positions = [after[split].index(text) for text in old]
        assert positions == sorted(positions)
        assert all(text in before[split] for text in old)


def test_bytes_are_decoded_as_utf8_without_newline_translation(tmp_path):
    (tmp_path / "turtle.py").write_bytes(b"s = '\xc3\xa9'\r\nbad = b'\xff'\n")
    assert data.load_python_stdlib(tmp_path)["test"] == "s = '\u00e9'\r\nbad = b'\ufffd'\n"


def test_a_folder_without_sources_says_what_to_give(tmp_path):
    with pytest.raises(data.InputError, match="no .py files.*standard library"):
        data.load_python_stdlib(tmp_path)
    with pytest.raises(data.InputError, match="does not exist"):
        data.load_python_stdlib(tmp_path / "missing")


def test_the_python_version_is_recorded(monkeypatch):
    assert data.dataset_version("python-stdlib") == f"python {platform.python_version()}"
    assert data.dataset_version("wiki-sample").startswith("gensim ")
    assert data.dataset_version("wiki-sample+python-stdlib") == (
        f"{data.dataset_version('wiki-sample')}+python {platform.python_version()}")
    assert data.dataset_version("owner/name") is None
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    assert data.dataset_version("python-stdlib") == "python 3.99.0"


def test_the_token_cache_key_holds_the_python_version(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNING_COURSE_CACHE", str(tmp_path))
    small = {"train": "def f(x):\n    return x\n" * 40, "validation": "y = 2\n" * 20, "test": "z = 3\n" * 30}
    monkeypatch.setattr(data, "load_corpus", lambda name: small)
    monkeypatch.setattr(data, "_stdlib_listing_digest", lambda root=None: "same-files")
    tokenizer = tiny_tokenizer()
    first = data.load_token_splits(tokenizer, "python-stdlib")
    assert [p.name.split("-")[:2] for p in (tmp_path / "tokens").iterdir()] == [["python", "stdlib"]]
    data.load_token_splits(tokenizer, "python-stdlib")  # the same version: the same file
    assert len(list((tmp_path / "tokens").iterdir())) == 1
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    second = data.load_token_splits(tokenizer, "python-stdlib")
    assert len(list((tmp_path / "tokens").iterdir())) == 2
    assert all(torch.equal(first[s], second[s]) for s in data.SPLITS)


def test_the_token_cache_key_holds_the_stdlib_listing(monkeypatch, tmp_path):
    tokenizer = tiny_tokenizer()
    digests = iter(["listing-a", "listing-b"])
    monkeypatch.setattr(data, "_stdlib_listing_digest", lambda root=None: next(digests))
    assert data._token_cache_path(tokenizer, "python-stdlib") != data._token_cache_path(tokenizer, "python-stdlib")


def test_the_listing_digest_sees_a_changed_file(tmp_path):
    root = make_stdlib(tmp_path)
    before = data._stdlib_listing_digest(root)
    (root / "os.py").write_text("import sys\nimport posix\n")
    assert data._stdlib_listing_digest(root) != before


@pytest.mark.slow
def test_python_stdlib_token_counts_with_smollm2():
    models = pytest.importorskip("pruning_course.models")
    try:
        _model, tokenizer, _adapter = models.load_model("smollm2-135m")
    except (OSError, RuntimeError) as error:
        pytest.skip(f"SmolLM2-135M is not available: {error}")
    counts = {split: len(ids) for split, ids in data.load_token_splits(tokenizer, "python-stdlib").items()}
    assert counts["test"] >= 90_000
    if platform.python_version() == "3.11.7":  # the numbers of the module docstring
        assert (counts["validation"], counts["test"]) == (138_943, 173_583)


# --------------------------------------------------------------------------- names and mixes


@pytest.mark.parametrize("name", ["wiki-sample", "python-stdlib", "wikitext2", "codeparrot-valid", "owner/name",
                                  "owner/name:config"])
def test_good_corpus_names(name):
    assert data.check_corpus_name(name) == name


@pytest.mark.parametrize("name", ["python_stdlib", "stdlib", "", "owner/", "/name", "a/b/c", " wiki-sample"])
def test_bad_corpus_names_list_the_known_ones(name):
    with pytest.raises(data.InputError, match="unknown corpus.*wiki-sample, python-stdlib, wikitext2, codeparrot-valid"):
        data.check_corpus_name(name)


def test_mixes_are_parsed_in_the_order_named():
    assert data.parse_corpus_mix("wiki-sample") == ("wiki-sample",)
    assert data.parse_corpus_mix("python-stdlib+wiki-sample") == ("python-stdlib", "wiki-sample")
    assert data.parse_corpus_mix("wiki-sample+owner/code:python") == ("wiki-sample", "owner/code:python")


@pytest.mark.parametrize("name,message", [("wiki-sample+", "empty part"), ("+python-stdlib", "empty part"),
                                          ("wiki-sample+wiki-sample", "twice"),
                                          ("wiki-sample+stdlib", "unknown corpus 'stdlib'")])
def test_bad_mixes_say_what_to_do(name, message):
    with pytest.raises(data.InputError, match=message):
        data.parse_corpus_mix(name)


WIKI_IDS = torch.arange(0, 400)
CODE_IDS = torch.arange(10_000, 10_300)


def test_one_corpus_is_the_plain_sampler():
    assert torch.equal(data.mixed_calibration_windows({"wiki": WIKI_IDS}, 7, 16, seed=3),
                       data.calibration_windows(WIKI_IDS, 7, 16, seed=3))


@pytest.mark.parametrize("n,counts", [(8, (4, 4)), (7, (4, 3)), (2, (1, 1))])
def test_a_mix_shares_windows_equally_and_the_first_corpus_takes_the_odd_one(n, counts):
    windows = data.mixed_calibration_windows({"wiki": WIKI_IDS, "code": CODE_IDS}, n, 16, seed=5)
    assert windows.shape == (n, 16)
    from_wiki = int((windows[:, 0] < 10_000).sum())
    assert (from_wiki, n - from_wiki) == counts
    expected = torch.cat([data.calibration_windows(WIKI_IDS, counts[0], 16, seed=5),
                          data.calibration_windows(CODE_IDS, counts[1], 16, seed=5)])
    assert torch.equal(windows, expected)


def test_a_corpus_block_in_a_mix_is_what_it_alone_draws_first():
    alone = data.calibration_windows(CODE_IDS, 8, 16, seed=2)
    mixed = data.mixed_calibration_windows({"wiki": WIKI_IDS, "code": CODE_IDS}, 8, 16, seed=2)
    assert torch.equal(mixed[4:], alone[:4])


def test_three_corpora_share_a_remainder_in_order():
    third = torch.arange(50_000, 50_200)
    windows = data.mixed_calibration_windows({"a": WIKI_IDS, "b": CODE_IDS, "c": third}, 8, 8, seed=0)
    sources = ["a" if w < 10_000 else "b" if w < 50_000 else "c" for w in windows[:, 0].tolist()]
    assert sources == ["a"] * 3 + ["b"] * 3 + ["c"] * 2


def test_a_mix_needs_a_window_per_corpus():
    with pytest.raises(data.InputError, match="cannot be shared among 2 corpora: use at least 2"):
        data.mixed_calibration_windows({"wiki": WIKI_IDS, "code": CODE_IDS}, 1, 16)


# --------------------------------------------------------------------------- hub code datasets (no network)


def fake_hub(monkeypatch, rows: dict, calls: list):
    import datasets

    def load_dataset(path, config=None, **options):
        calls.append((path, config, options))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


CODE_ROWS = {
    "repo_name": ["octo/app", "octo/app", "ann/lib", "bob/tool", "octo/app"],
    "path": ["main.py", "util.py", "lib/__init__.py", "cli.py", "main.py"],
    "content": ["print('main')\n", "def util(): pass\n", "VERSION = 1\n", "import sys\n", "print('copy')\n"],
    "license": ["mit"] * 5,
}


def test_a_hub_code_dataset_is_split_by_path(monkeypatch):
    calls = []
    fake_hub(monkeypatch, CODE_ROWS, calls)
    corpus = data.hub_code_splits(data.HubCodeCorpus("owner/code", data_dir="data/python"))
    assert calls == [("owner/code", None, {"data_dir": "data/python", "split": "train"})]
    files = {"octo/app/main.py": "print('main')\n", "octo/app/util.py": "def util(): pass\n",
             "ann/lib/lib/__init__.py": "VERSION = 1\n", "bob/tool/cli.py": "import sys\n"}  # the first of a key
    assert corpus == data.split_files(files.items())
    assert "print('copy')" not in "".join(corpus.values())


def test_codeparrot_valid_loads_codeparrot_and_keeps_a_stable_tenth(monkeypatch):
    calls = []
    n = 400
    rows = {"repo_name": [f"user{i}/repo" for i in range(n)], "path": ["a.py"] * n,
            "content": [f"x = {i}\n" for i in range(n)]}
    fake_hub(monkeypatch, rows, calls)
    corpus = data.load_corpus("codeparrot-valid")
    assert calls[0][0] == "codeparrot/codeparrot-clean-valid" and calls[0][2]["split"] == "train"
    kept = [i for i in range(n) if data.split_bucket(f"keep|user{i}/repo/a.py") < 100]
    assert 20 <= len(kept) <= 70
    texts = "".join(corpus.values())
    assert all((f"x = {i}\n" in texts) == (i in kept) for i in range(n))


def test_a_hub_code_dataset_without_the_columns_names_them(monkeypatch):
    fake_hub(monkeypatch, {"text": ["a"], "path": ["a.py"]}, [])
    with pytest.raises(data.InputError, match=r"no column\(s\) \['content', 'repo_name'\].*it has"):
        data.load_corpus("codeparrot-valid")


def test_an_offline_hub_code_dataset_says_what_works_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="internet.*'wiki-sample' works offline, and so does 'python-stdlib'"):
        data.load_corpus("codeparrot-valid")
