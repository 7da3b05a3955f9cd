"""Model files on disk: checked before they are loaded, written so that an interruption leaves
nothing that looks whole.

* :func:`check_model_dir` / :func:`check_safetensors`: a saved model directory or a safetensors
  file is complete and readable, else :class:`ModelFileError` with one line that names the file,
  what is wrong and what to do (instead of a ``SafetensorError`` traceback, or transformers'
  "You need to have sentencepiece or tiktoken installed" for a folder without a tokenizer);
* :func:`save_model_dir`: ``save_pretrained`` into a hidden staging folder next to the target,
  renamed into place only when complete; a model already at the target survives a failed save;
* :func:`writing`: the same for one file (JSON results, compressed models, plots).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError

# What a ``save_pretrained`` directory holds: a config, weights in one of these forms, a tokenizer.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelFileError(InputError):
    """A model file or directory is missing, incomplete or unreadable (the message says which and why)."""


def check_safetensors(path: str | Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` is a complete safetensors file.

    Only the header is read: safetensors checks that it parses and that the tensors it lists
    cover the file exactly, which catches empty, truncated and random files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        reason = str(error).removeprefix("Error while deserializing header: ")
        size = path.stat().st_size
        raise ModelFileError(
            f"{path} is not a complete safetensors file ({reason}; {size:,} bytes): it is truncated, "
            "empty or not a model file; save the model again"
        ) from None


def check_model_dir(path: str | Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` holds a loadable ``save_pretrained`` model:
    a ``config.json`` that parses, weights, a tokenizer, and every safetensors file complete."""
    path = Path(path)
    hint = "an empty folder, or a save that did not finish; save the model again or pass another --model"
    config = path / "config.json"
    if not config.is_file():
        raise ModelFileError(f"{path} is not a saved model: it has no config.json ({hint})")
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{config} is not valid JSON ({error}); save the model again") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelFileError(f"{path} is not a complete saved model: it has no weights (model.safetensors; {hint})")
    if not (path / "tokenizer_config.json").is_file() or not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise ModelFileError(f"{path} is not a complete saved model: it has no tokenizer (tokenizer.json; {hint})")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)


def looks_like_model_dir(path: Path) -> bool:
    """True for a folder that holds a ``save_pretrained`` config (complete or not)."""
    return (path / "config.json").is_file()


@contextmanager
def writing(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``.

    On any error or interruption the temporary file is removed and ``target`` (if it existed)
    is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def transformers_progress_bars(enabled: bool):
    """Silence transformers' (and the Hub's) progress bars for the block unless ``enabled``."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def save_model_dir(model, tokenizer, target: str | Path, *, progress: bool = True) -> Path:
    """``save_pretrained`` ``model`` and ``tokenizer`` (if not None) to ``target`` as one step.

    Written into a hidden ``.NAME.partial-*`` folder beside ``target`` and renamed into place
    when complete. A model already at ``target`` is moved aside first and deleted only after
    the new one is in place, so an interruption (Ctrl-C, a full disk) leaves either the old
    model or the new one, never a half-written folder under the target's name. A ``target``
    that holds other files is refused (``ValueError``) before anything is written."""
    target = Path(target)
    check_writable_dir(target, "the save target")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    old = None
    try:
        staging.chmod(0o755)  # mkdtemp makes the folder private; a saved model is not
        with transformers_progress_bars(progress):
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def check_writable_file(path: str | Path, option: str) -> None:
    """Raise ``ValueError`` (one line) unless a file can be written at ``path`` -- checked before
    any long work, so that a result is not lost at the end for want of a place to put it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give the name of a file to write")
    _check_can_create_in(path, option)
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as error:
            raise InputError(f"{option} {path}: cannot write this file ({error.strerror}); choose another path") from None


def check_writable_dir(path: str | Path, option: str) -> None:
    """Raise ``ValueError`` unless a model can be saved to the folder ``path``: it is new, empty
    or an earlier saved model (replaced), never a file or a folder of other files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give the name of a folder to save the model in")
    if path.is_dir() and any(path.iterdir()) and not looks_like_model_dir(path):
        raise InputError(f"{option} {path} already holds files that are not a saved model; "
                         "choose a new or empty folder (nothing was overwritten)")
    _check_can_create_in(path, option)


def _check_can_create_in(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` is a folder in which a file can be created."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {path}: {ancestor} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pruning-course-probe-", dir=ancestor)
    except OSError as error:
        raise InputError(f"{option} {path}: cannot write in {ancestor} ({error.strerror}); choose another path") from None
    os.close(fd)
    os.unlink(probe)
