"""torch.export of the run's final model for MLflow's pt2 format, traced once per architecture.

Tracing the CNN-LSTM with torch.export takes about 0.85 s of CPU at the end of every run (a
fifth of a 2-round reference run; BENCHMARKS.md section 1), yet the traced program depends only
on the model's code, its configuration and the input's shape, not on the trained weights. So the
program is kept under `paths.cache_dir/export`, keyed by those (and in memory, for the next run of
a sweep in the same process). A later run of the same architecture loads it (about 0.06 s),
copies its own weights (parameters and buffers) in and, before MLflow saves it, checks the
program's logits against the model's own on the example input and on a seeded random batch. A
mismatch (a model whose code changed in a way the key does not see) or an unreadable entry is
traced afresh and replaces the entry. The check is on those inputs only: a change that shows on
none of them (a constant the model holds outside its buffers, used only on other inputs) would
go unseen, so `logger.export_cache=false` is the setting for models edited between runs.

The directory keeps the `KEEP` entries used last (an entry's mtime is refreshed when a run loads
it) and drops the rest whenever a new entry is stored; it also drops the temporary files of
writers killed mid-write (SIGKILL, power loss) once they are `STALE_S` old, which no live writer
of a program of a few MB comes near.

MLflow's pt2 writer traces the module it is given with `torch.export.export`; `reusing` hands
it the cached program for that one module during that one call (tests/test_export_cache.py
fails if MLflow stops tracing through that function).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

_TORCH_DIR = Path(torch.__file__).resolve().parent

#: entries kept in a cache directory: the ones used last (a CNN-LSTM's program is about 1.5 MB)
KEEP = 16
#: age in seconds after which a writer's temporary file is taken as left by a killed process
STALE_S = 3600.0
_TMP_SUFFIX = ".tmp.pt2"


def _dynamic_shapes() -> list[dict]:
    """What MLflow's pt2 writer passes for a signature whose batch axis is -1."""
    from torch.export import Dim

    return [{0: Dim.AUTO}]


def _sources(model: nn.Module) -> dict[str, str]:
    """SHA-256 of the source file of every module class in the model that is not torch's own
    (torch's are covered by its version)."""
    out: dict[str, str] = {}
    for cls in {type(m) for m in model.modules()}:
        try:
            path = Path(inspect.getsourcefile(cls) or "").resolve()
        except (TypeError, OSError):
            continue
        if path.is_file() and _TORCH_DIR not in path.parents:
            out[f"{path.name}:{cls.__qualname__}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def key(model: nn.Module, example: torch.Tensor) -> str:
    """The cache key: torch's version, the model's classes, their source, its repr (layer
    settings), its state dict's names, shapes and dtypes, and the example's shape and dtype."""
    desc = {
        "torch": torch.__version__,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "sources": _sources(model),
        "repr": repr(model),
        "state": [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()],
        "example": [list(example.shape), str(example.dtype)],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


def _fresh(model: nn.Module, example: torch.Tensor):
    with warnings.catch_warnings():
        # nn.LSTM re-points its `_flat_weights` list at its parameters on every call, which
        # torch.export reports as tensor attributes assigned during export. They are the
        # parameters the program already holds, and its logits are checked against the model's
        # (`_reproduces`), so the warning says nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"The tensor attributes (\S+\._flat_weights\[\d+\](, )?)+ were "
                                r"assigned during export", category=UserWarning)
        return torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes())


def _reproduces(program, model: nn.Module, example: torch.Tensor) -> bool:
    """Whether the program's logits equal the model's own on the example and on a seeded
    random batch of its shape (beats of unit scale)."""
    noise = torch.randn(example.shape, generator=torch.Generator().manual_seed(0), dtype=example.dtype)
    module = program.module()
    with torch.no_grad():
        for x in (example, noise):
            got, want = module(x), model(x)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
                return False
    return True


def _with_weights(program, model: nn.Module, example: torch.Tensor) -> bool:
    """Copy the model's parameters and buffers (non-persistent ones too, which the program holds
    as constants) into the program; True if it then reproduces the model."""
    state = {**dict(model.named_buffers()), **model.state_dict()}
    with torch.no_grad():
        for name, tensor in program.state_dict.items():
            if name not in state or state[name].shape != tensor.shape:
                return False
            tensor.copy_(state[name])
        for name, tensor in program.constants.items():
            if isinstance(tensor, torch.Tensor) and name in state and state[name].shape == tensor.shape:
                tensor.copy_(state[name])
    return _reproduces(program, model, example)


def _save(program, path: Path) -> None:
    """Written under a temporary name and renamed: a run killed mid-write leaves no entry. The
    cache is optional, so any failure (read-only directory, full disk: torch's writer raises
    RuntimeError there) costs the next run time, not this run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=_TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        try:
            torch.export.save(program, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("model export not cached in %s: %s", path.parent, e)
        return
    _prune(path.parent, keep=path)


def _prune(directory: Path, keep: Path) -> None:
    """Drop all but the `KEEP` entries used last (`keep`, just stored, always stays) and
    temporary files older than `STALE_S`. Other processes may prune or store at the same time:
    a file already gone, or one that cannot be removed, is left to them."""
    now = time.time()
    entries: list[tuple[float, Path]] = []
    try:
        for f in directory.iterdir():
            try:
                mtime = f.stat().st_mtime
            except OSError:
                continue
            if f.name.endswith(_TMP_SUFFIX):
                if now - mtime > STALE_S:
                    _unlink(f)
            elif f.suffix == ".pt2" and f != keep:
                entries.append((mtime, f))
    except OSError as e:
        log.debug("export cache %s not pruned: %s", directory, e)
        return
    for _, f in sorted(entries, reverse=True)[max(KEEP - 1, 0):]:
        _unlink(f)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _touch(path: Path) -> None:
    """Mark an entry used now, so pruning keeps the entries runs still load."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _load(path: Path):
    """The stored program, or None where there is none, it cannot be read, or another user wrote
    it: the check before saving runs fixed inputs, which a planted program could recognise, so
    only this user's own entries are trusted (another user's is traced afresh and replaced)."""
    try:
        if not path.is_file():
            return None
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
            log.warning("cached model export %s belongs to another user; tracing afresh", path)
            return None
        return torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable entry is traced afresh
        log.warning("cached model export %s unreadable (%s); tracing afresh", path, e)
        return None


def exported(model: nn.Module, example: torch.Tensor, cache_dir: str | Path | None):
    """(program, hit): the model's torch.export program with the model's current weights, from
    the cache where a valid entry exists (hit=True), else traced now and stored."""
    model.eval()
    if cache_dir is None:
        return _traced(model, example)[0], False
    k = key(model, example)
    path = Path(cache_dir) / f"{k}.pt2"
    # The runs of a sweep share a process: the program loaded or traced by one serves the next.
    program = _MEMORY.get(k)
    if program is not None and _with_weights(program, model, example):
        _touch(path)
        return program, True
    program = _load(path)
    if program is not None:
        if _with_weights(program, model, example):
            _remember(k, program)
            _touch(path)
            return program, True
        log.warning("cached model export %s does not reproduce the model; tracing afresh", path)
    program, faithful = _traced(model, example)
    if faithful:  # a program that does not reproduce the model would only be traced again by the next run
        _save(program, path)
        _remember(k, program)
    return program, False


def _traced(model: nn.Module, example: torch.Tensor):
    """A fresh tracing, checked as a cached one is (MLflow's own check of the saved model, which
    loads it back at every run's end, is skipped: see pfl.tracking). A program shares its
    tensors with the module it traced, and the next run copies its weights into the kept
    program: so a copy is traced, and the caller's model is never written to."""
    program = _fresh(copy.deepcopy(model), example)
    faithful = _reproduces(program, model, example)
    if not faithful:
        log.warning("torch.export's program of %s does not reproduce the model's logits on the input example",
                    type(model).__name__)
    return program, faithful


#: programs of this process by key, the most recent last (a few MB each at most)
_MEMORY: dict[str, object] = {}
_MEMORY_SIZE = 4


def _remember(k: str, program) -> None:
    _MEMORY.pop(k, None)
    _MEMORY[k] = program
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.pop(next(iter(_MEMORY)))


#: module id -> the (module, program, answered) of its open `reusing` blocks, innermost last, any thread
_ANSWERS: dict[int, list[tuple[nn.Module, object, list[int]]]] = {}
_LOCK = threading.Lock()
_ORIGINAL: list = []


def _export(mod, *args, **kwargs):
    with _LOCK:
        blocks = _ANSWERS.get(id(mod))
        entry = blocks[-1] if blocks and blocks[-1][0] is mod else None
        original = _ORIGINAL[0] if _ORIGINAL else None
    if entry is not None:
        entry[2][0] += 1
        return entry[1]
    if original is None:  # the last block closed while this call was on its way: torch's is back
        return torch.export.export(mod, *args, **kwargs)
    return original(mod, *args, **kwargs)


@contextlib.contextmanager
def reusing(model: nn.Module, program) -> Iterator[list[int]]:
    """Within the block, `torch.export.export(model, ...)` returns `program` instead of
    tracing `model` again; any other module is traced as usual. Yields a one-element list
    counting the calls answered from `program`. Blocks may nest (the innermost block of a module
    answers) or overlap across threads: torch's function is put back when the last one closes."""
    answered = [0]
    entry = (model, program, answered)
    with _LOCK:
        if not _ANSWERS:
            _ORIGINAL[:] = [torch.export.export]
            torch.export.export = _export
        _ANSWERS.setdefault(id(model), []).append(entry)
    try:
        yield answered
    finally:
        with _LOCK:
            blocks = _ANSWERS.get(id(model), [])
            blocks[:] = [b for b in blocks if b is not entry]
            if not blocks:
                _ANSWERS.pop(id(model), None)
            if not _ANSWERS:
                torch.export.export = _ORIGINAL.pop()
