"""Peak memory of inference with a compressed model, measured in a fresh process.

A process's peak resident memory (``VmHWM``) only goes up, and a Python process that has already
loaded other models keeps freed memory around, so each measurement runs
``python -m pruning_course.quantize._memory_probe FILE`` in its own process: it loads the file written by
:func:`~pruning_course.quantize.storage.save_compressed`, resets the peak record
(:func:`pruning_course.evaluate.reset_peak_rss`) and runs one forward pass of random tokens.

Two ways to run the same file:

* ``packed=False``: every weight decoded once into a float model (what "simulated" quantization
  costs: the same RAM as the dense model in that dtype);
* ``packed=True``: weights stay compressed and each linear decodes its own weight just before its
  matmul (:class:`~pruning_course.quantize.storage.PackedLinear`): RAM holds the compressed model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import InputError

DTYPES = ("float32", "bfloat16", "float16")


def measure_inference_memory(
    path: str | Path,
    *,
    packed: bool = False,
    seqlen: int = 512,
    batch_size: int = 1,
    dtype: str = "float32",
    seed: int = 0,
    timeout: float | None = 600,
) -> dict:
    """Memory of loading ``path`` and running one ``(batch_size, seqlen)`` forward, in a fresh process.

    Returns MiB: ``baseline_mb`` (resident after importing torch and transformers),
    ``resident_after_load_mb``, ``peak_load_mb`` (peak while loading), ``peak_inference_mb`` (peak
    during the forward pass, counted from the resident memory after loading) and
    ``model_resident_mb`` (= after load - baseline).
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    command = [sys.executable, "-m", "pruning_course.quantize._memory_probe", str(path), "--seqlen", str(seqlen),
               "--batch-size", str(batch_size), "--dtype", dtype, "--seed", str(seed)]
    if packed:
        command.append("--packed")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the memory measurement failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
