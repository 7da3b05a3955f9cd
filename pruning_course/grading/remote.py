"""Graded checks that call the learner's code across a process boundary.

While a notebook is graded, its test cells do not run in the student's kernel. The grader
(``autograder/course_preprocessors.CourseExecute``) runs the instructor's test-cell source in its
own process, where ``pruning_course.checks`` is the installed, unmodified package; each name the
cell uses that the grader does not define (``wanda_mask``) becomes a proxy for the object of that
name in the kernel (:class:`LearnerNamespace`). Calling a proxy sends the arguments to the kernel,
calls the learner's function there, and brings the result (and the arguments, which it may have
changed in place) back. The verdict -- the check raising or not -- is computed where no student
code runs, so replacing the checks in the kernel, an input transformer that rewrites the test
cells, or a faked gradebook change nothing.

Across the boundary:

* grader -> kernel: ``torch.save`` pickles (the kernel may unpickle anything the grader made);
* kernel -> grader: :func:`safe_load`, ``torch.load(weights_only=True)`` -- tensors, numbers,
  strings, containers -- plus the classes a check's answer can legitimately hold
  (:func:`acceptable_global`: ``torch.nn`` and ``transformers`` modules and configs, torch's
  pruning methods, datasketch's MinHash and numpy arrays). Nothing else is unpickled: a reply
  that names any other global is refused, so no code of the student's runs in the grader.

:func:`answer` is the kernel side: the grader executes a one-line call to it in the kernel.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import io
import os
import pickle
import re
import secrets
import types
from pathlib import Path
from typing import Any, Callable

import torch

#: modules whose *classes* a learner's answer may contain (a model, a config, a MinHash)
_CLASS_MODULES = ("torch.nn.", "transformers.models.", "transformers.activations", "transformers.pytorch_utils",
                  "transformers.configuration_utils", "transformers.generation.configuration_utils",
                  "transformers.modeling_rope_utils", "datasketch.")
#: individual functions a pickled model or MinHash refers to
_FUNCTIONS = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
              "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "datasketch.hashfunc.sha1_hash32",
              "transformers.modeling_rope_utils._compute_default_rope_parameters", "numpy.dtype", "numpy.ndarray"}
#: the package's own classes that travel with a check's arguments (hook objects)
_PACKAGE_CLASSES = {"pruning_course.checks.wanda.RecordingHook", "pruning_course.grading.remote.LeftHook"}
_ACCEPTED: dict[str, Any] = {}


class LearnerError(Exception):
    """The learner's kernel sent something the grader does not accept."""


class LearnerTimeout(BaseException):
    """The learner's code ran past the cell's time limit. A ``BaseException``, like
    ``KeyboardInterrupt``: it ends the whole test cell, not just the check's call."""


class LearnerGone(BaseException):
    """The learner's kernel died while the checks were calling it."""


def acceptable_global(name: str) -> Any | None:
    """The object ``name`` refers to if a learner's reply may contain it, else ``None``."""
    module, _, attr = name.rpartition(".")
    if not module:
        return None
    if (name in _FUNCTIONS or name in _PACKAGE_CLASSES or re.fullmatch(r"numpy\.dtypes\.\w+DType", name)
            or module.startswith(_CLASS_MODULES)):
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        if name in _FUNCTIONS or isinstance(obj, type):
            return obj
    if module.startswith("pruning_course.") and not module.startswith("pruning_course.grading"):
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):  # plain records: building one runs no code
            return obj
    return None


def safe_load(data: bytes) -> Any:
    """Unpickle a learner's reply: torch's weights-only unpickler, plus :func:`acceptable_global`."""
    for _ in range(64):  # each pass admits one more acceptable class
        try:
            with torch.serialization.safe_globals(list(_ACCEPTED.values())):
                return torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
            name = (found.group(1) or found.group(2)) if found else None
            obj = acceptable_global(name) if name else None
            if obj is None or name in _ACCEPTED:
                what = name or "an object of a kind the grader does not accept"
                raise LearnerError(f"your code returned (or left in its arguments) {what}, which the grader does "
                                   "not accept: return tensors, numbers, strings, lists, dicts, or the torch / "
                                   "transformers objects it was given") from None
            _ACCEPTED[name] = obj
    raise LearnerError("your code returned an object of too many different classes")


# ---------------------------------------------------------------------------------------------
# The grader's side: proxies for the objects in the learner's kernel
# ---------------------------------------------------------------------------------------------


class Learner:
    """The student's kernel, seen from the grader: ``run(code, timeout)`` executes code there
    (returns the printed text); requests and replies pass through files in ``exchange``."""

    def __init__(self, run: Callable[[str, float], str], exchange: Path, timeout: float | Callable[[], float]):
        self._run, self.exchange = run, Path(exchange)
        self._timeout = timeout if callable(timeout) else (lambda: timeout)
        self.exchange.mkdir(parents=True, exist_ok=True)
        self.printed: list[str] = []  # what the learner's code printed while the checks ran

    def request(self, message: dict) -> Any:
        token = secrets.token_hex(8)
        request, reply = self.exchange / f"{token}.request", self.exchange / f"{token}.reply"
        seconds = self._timeout()
        if seconds <= 0:
            raise LearnerTimeout("the checks of this cell ran out of time while calling your code")
        torch.save(message, request)
        try:
            text = self._run(f"__import__('pruning_course.grading.remote', fromlist=['answer'])"
                             f".answer({str(request)!r}, {str(reply)!r})", seconds)
            if text:
                self.printed.append(text)
            try:
                data = reply.read_bytes()
            except OSError:
                raise LearnerError("the kernel did not answer (it crashed, exited or ran out of time)") from None
        finally:
            request.unlink(missing_ok=True)
            reply.unlink(missing_ok=True)
        return safe_load(data)

    def describe(self, name: str) -> Any:
        kind, value = self.request({"op": "describe", "name": name})
        if kind == "missing":
            raise NameError(f"name '{name}' is not defined")
        if kind == "function":
            return RemoteFunction(self, name)
        if kind == "autograd_function":
            return remote_autograd_function(self, name)
        if kind == "module":  # the grader's own copy of a module the notebook imported (``math``, ``torch``)
            if not _importable_here(value):
                raise NameError(f"name '{name}' is the module {value!r}, which a test cell may not use")
            return importlib.import_module(value)
        return value  # plain data (a number, a tensor, a list): a copy

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        sent = tuple(_plain(a) for a in args)
        reply = self.request({"op": "call", "name": name, "args": sent, "kwargs": kwargs})
        if reply[0] == "raised":
            raise _learner_exception(reply[1], reply[2])
        _, result, new_args, new_kwargs = reply
        result = _from_wire(result, args)
        originals = list(args) + list(kwargs.values())
        changed = list(new_args) + [new_kwargs[k] for k in kwargs]
        kept: dict[int, Any] = {}  # id of an object of the reply -> the grader's object it became
        for original, new in zip(originals, changed):
            _update_in_place(original, new, kept)
        return _substitute(result, kept)


class RemoteFunction:
    """A learner's function or class in the kernel, called from a check in the grader."""

    def __init__(self, learner: Learner, name: str):
        self._learner, self.__name__, self.__qualname__ = learner, name, name

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self._differentiable_call(args, kwargs)
        return self._learner.call(self.__name__, args, kwargs)

    def _differentiable_call(self, args: tuple, kwargs: dict):
        """Call with inputs that require grad: the result carries a backward that asks the kernel
        for the gradients (of the learner's own graph there), so a check can differentiate it."""
        needs = [isinstance(a, torch.Tensor) and a.requires_grad for a in args]
        reply = self._learner.request({"op": "forward", "name": self.__name__, "args": tuple(
            a.detach() if isinstance(a, torch.Tensor) else a for a in args), "kwargs": kwargs,
            "needs_grad": needs, "call": True})
        if reply[0] == "raised":
            raise _learner_exception(reply[1], reply[2])
        token, out, differentiable = reply
        if not differentiable:
            return out  # the learner's result does not depend on the inputs through autograd
        return _KernelGraph.apply(self._learner, token, out, *args)

    def __repr__(self) -> str:
        return f"<learner's {self.__name__}>"


def remote_autograd_function(learner: Learner, name: str) -> type:
    """A ``torch.autograd.Function`` whose forward and backward are the learner's, run in the kernel."""

    def forward(ctx, *args):
        reply = learner.request({"op": "forward", "name": name, "args": args, "needs_grad": list(ctx.needs_input_grad)})
        if reply[0] == "raised":
            raise _learner_exception(reply[1], reply[2])
        ctx.token, out = reply
        return out

    def backward(ctx, *grads):
        reply = learner.request({"op": "backward", "token": ctx.token, "grads": grads})
        if reply[0] == "raised":
            raise _learner_exception(reply[1], reply[2])
        return tuple(reply[1])

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})


class _KernelGraph(torch.autograd.Function):
    """An output computed in the kernel, with a backward that the kernel computes too."""

    @staticmethod
    def forward(ctx, learner, token, out, *inputs):
        ctx.learner, ctx.token, ctx.count = learner, token, len(inputs)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        reply = ctx.learner.request({"op": "backward", "token": ctx.token, "grads": (grad,)})
        if reply[0] == "raised":
            raise _learner_exception(reply[1], reply[2])
        return (None, None, None, *reply[1])


class LearnerNamespace(dict):
    """The test cell's local names: its own assignments, else the learner's object of that name."""

    def __init__(self, learner: Learner):
        super().__init__()
        self.learner = learner

    def __missing__(self, name: str) -> Any:
        if hasattr(builtins, name):
            raise KeyError(name)  # let Python find the builtin
        value = self.learner.describe(name)
        self[name] = value
        return value


_NOT_IMPORTED = {"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "webbrowser"}
_THIRD_PARTY = {"torch", "numpy", "transformers", "datasets", "datasketch", "pruning_course", "matplotlib", "nbformat"}


def _plain(value: Any) -> Any:
    """What to send for an argument: a ``datasets`` batch or row (a lazy view) goes as a plain dict."""
    if type(value).__module__.startswith("datasets.formatting"):
        return dict(value)
    return value


def _importable_here(module: str) -> bool:
    """A module the grader may import itself for a test cell: the standard library or the course's stack."""
    import sys

    top = module.split(".")[0]
    return top not in _NOT_IMPORTED and (top in sys.stdlib_module_names or top in _THIRD_PARTY)


def _learner_exception(type_name: str, message: str) -> BaseException:
    """The learner's exception, re-created in the grader: a builtin type when it is one, else one of that name."""
    if type_name == "CheckFailed":  # a check's own helper, called by the learner's code, failed in the kernel
        from ..checks import CheckFailed

        return CheckFailed(message)
    builtin = getattr(builtins, type_name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception) and not issubclass(builtin, OSError):
        try:
            return builtin(message)
        except Exception:  # an exception type whose constructor wants other arguments
            pass
    return type(type_name, (Exception,), {})(message)


def _update_in_place(original: Any, new: Any, kept: dict) -> None:
    """Make the grader's ``original`` argument what the learner's call left it as (``new``);
    ``kept`` maps the ids of the reply's objects to the grader's objects that stand for them."""
    if original is new or (isinstance(new, str) and new == UNCHANGED):
        return
    kept[id(new)] = original
    if isinstance(original, torch.Tensor) and isinstance(new, torch.Tensor):
        if original.layout != torch.strided or new.layout != torch.strided:
            return  # a sparse tensor cannot be changed in place: nothing to bring back
        with torch.no_grad():
            if original.shape == new.shape and original.dtype == new.dtype:
                if not torch.equal(original, new):
                    original.copy_(new)
            else:
                original.set_(new.detach().clone())
    elif isinstance(original, torch.nn.Module) and type(original) is type(new):
        _sync_module(original, new, kept)
    elif isinstance(original, list) and isinstance(new, list):
        original[:] = new
    elif type(original) is type(new) and dataclasses.is_dataclass(original):  # a check's callable, e.g. a counter
        original.__dict__.update(new.__dict__)
    elif isinstance(original, dict) and isinstance(new, dict):
        original.clear()
        original.update(new)


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to it and, through lists, plain tuples and dicts, to
    everything inside; where ``leaf`` returns its argument itself, the walk goes on inside it."""
    replaced = leaf(value)
    if replaced is not value:
        return replaced
    if isinstance(value, list):
        return [_map_leaves(v, leaf) for v in value]
    if type(value) is tuple:
        return tuple(_map_leaves(v, leaf) for v in value)
    if type(value) is dict:
        return {k: _map_leaves(v, leaf) for k, v in value.items()}
    return value


def _substitute(value: Any, kept: dict) -> Any:
    """``value`` with every object that stands for one of the grader's (``kept``) replaced by it."""
    return _map_leaves(value, lambda v: kept.get(id(v), v))


def _sync_module(original: torch.nn.Module, new: torch.nn.Module, registry: dict) -> None:
    """Give ``original`` the state of ``new`` while keeping the identity of what stays: submodules
    of the same name and class, parameters of the same shape, and the hook dictionaries (so a
    check's references to a layer and its hook handles stay valid)."""
    state = original.__dict__
    for key, value in new.__dict__.items():
        old = state.get(key)
        if key == "_modules":
            merged = {}
            for name, child in value.items():
                same = old.get(name) if old else None
                if same is not None and child is not None and type(same) is type(child):
                    registry[id(child)] = same
                    _sync_module(same, child, registry)
                    child = same
                merged[name] = child
            old.clear()
            old.update(merged)
        elif key in ("_parameters", "_buffers") and isinstance(old, dict):
            merged = {}
            for name, tensor in value.items():
                same = old.get(name)
                if (isinstance(same, torch.Tensor) and isinstance(tensor, torch.Tensor)
                        and same.shape == tensor.shape and same.dtype == tensor.dtype):
                    with torch.no_grad():
                        same.copy_(tensor)
                    registry[id(tensor)] = same
                    tensor = same
                merged[name] = tensor
            old.clear()
            old.update(merged)
        elif isinstance(value, dict) and isinstance(old, dict):
            old.clear()
            old.update(value)
        else:
            state[key] = value
    for key in [k for k in state if k not in new.__dict__]:
        del state[key]


# ---------------------------------------------------------------------------------------------
# The kernel's side
# ---------------------------------------------------------------------------------------------

_DATASET = "\x00pruning-course: datasets.Dataset\x00"


_SUBMODULE = "\x00pruning-course: submodule of an argument\x00"


def _to_wire(value, inside: dict):
    """The learner's result as it travels: a ``datasets.Dataset`` as its columns (plain lists),
    a module of an unchanged argument as a reference to it (``inside``: id -> (argument, name))."""
    def leaf(v):
        if id(v) in inside:
            return (_SUBMODULE, *inside[id(v)])
        if type(v).__module__.startswith("datasets.") and hasattr(v, "to_dict") and hasattr(v, "features"):
            return (_DATASET, v.to_dict())
        return v

    return _map_leaves(value, leaf)


def _from_wire(value, args: tuple):
    """The grader's objects back from :func:`_to_wire`'s forms (``args``: the call's own arguments)."""
    def leaf(v):
        if isinstance(v, tuple) and v and isinstance(v[0], str):
            if v[0] == _DATASET and len(v) == 2:
                import datasets

                return datasets.Dataset.from_dict(v[1])
            if v[0] == _SUBMODULE and len(v) == 3 and isinstance(v[1], int) and 0 <= v[1] < len(args) \
                    and isinstance(args[v[1]], torch.nn.Module) and isinstance(v[2], str):
                return args[v[1]].get_submodule(v[2])
        return v

    return _map_leaves(value, leaf)


_GRAPHS: dict[str, tuple] = {}
#: stands in a reply for an argument the learner's call left as it was
UNCHANGED = "\x00pruning-course: unchanged argument\x00"


def _fingerprint(value) -> bytes | None:
    try:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    except Exception:  # noqa: BLE001 - not picklable now: it changed, or cannot come back anyway
        return None


def answer(request_path: str, reply_path: str) -> None:
    """Run in the learner's kernel: carry out one request of the grader and write the reply."""
    from IPython import get_ipython

    from torch.utils.hooks import RemovableHandle

    message = torch.load(request_path, weights_only=False)
    namespace = get_ipython().user_ns
    # hook ids count from 0 in every process: start the kernel's far above the grader's, so that a
    # hook registered here never takes (and removes) the id of one the check registered there
    RemovableHandle.next_id = max(RemovableHandle.next_id, 1 << 40)
    try:
        reply = _carry_out(message, namespace)
    except BaseException as error:  # the learner's code raised (SystemExit and KeyboardInterrupt included)
        reply = ("raised", type(error).__name__, str(error))
    _replace_unpicklable_hooks(reply)
    try:
        torch.save(reply, reply_path + ".part")
    except Exception as error:  # noqa: BLE001 - something in the reply cannot be pickled
        torch.save(("raised", "TypeError", f"the grader cannot receive what your code returned ({error})"),
                   reply_path + ".part")
    os.replace(reply_path + ".part", reply_path)


class LeftHook:
    """Stands, in a reply, for a hook the learner's code left on a module (its own function cannot
    be sent): the check still sees that a hook is registered."""

    def __call__(self, *args, **kwargs):
        return None


def _replace_unpicklable_hooks(reply) -> None:
    items = reply if isinstance(reply, tuple) else (reply,)
    stack = list(items)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, torch.nn.Module):
            for module in item.modules():
                for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks):
                    for key, hook in list(hooks.items()):
                        try:
                            pickle.dumps(hook)
                        except Exception:  # noqa: BLE001 - a closure, a lambda, a bound method of the notebook
                            hooks[key] = LeftHook()


def _carry_out(message: dict, namespace: dict):
    op = message["op"]
    if op == "backward":
        inputs, out = _GRAPHS.pop(message["token"])
        wanted = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
        grads = torch.autograd.grad(out, [inputs[i] for i in wanted], message["grads"], allow_unused=True)
        full = [None] * len(inputs)
        for i, g in zip(wanted, grads):
            full[i] = g
        return ("ok", full)
    name = message["name"]
    if name not in namespace:
        return ("missing", None)
    obj = namespace[name]
    if op == "describe":
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
            return ("autograd_function", None)
        if callable(obj):
            return ("function", None)
        return ("value", obj)
    if op == "call":
        args, kwargs = message["args"], message["kwargs"]
        before = [_fingerprint(a) for a in (*args, *kwargs.values())]
        result = obj(*args, **kwargs)
        # send back only the arguments the call changed (a dataset or tokenizer it only read stays here)
        same = [_fingerprint(a) == b for a, b in zip((*args, *kwargs.values()), before)]
        # modules of an unchanged argument that the result holds go back as references to it
        inside = {id(m): (i, name) for i, (a, unchanged) in enumerate(zip(args, same)) if unchanged
                  and isinstance(a, torch.nn.Module) for name, m in a.named_modules()}
        result = _to_wire(result, inside)
        args = tuple(UNCHANGED if unchanged else a for a, unchanged in zip(args, same))
        kwargs = {k: UNCHANGED if unchanged else v for (k, v), unchanged in zip(kwargs.items(), same[len(args):])}
        return ("ok", result, args, kwargs)
    if op == "forward":  # keep the graph for a later "backward"
        inputs = [x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and need else x
                  for x, need in zip(message["args"], message["needs_grad"])]
        with torch.enable_grad():
            out = obj(*inputs, **message.get("kwargs", {})) if message.get("call") else obj.apply(*inputs)
        token = secrets.token_hex(8)
        differentiable = isinstance(out, torch.Tensor) and out.requires_grad
        if differentiable:
            _GRAPHS[token] = (inputs, out)
        detached = out.detach() if isinstance(out, torch.Tensor) else out
        return (token, detached, differentiable) if message.get("call") else (token, detached)
    raise ValueError(f"unknown request {op!r}")
