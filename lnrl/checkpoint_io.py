"""Checkpoints that survive a kill or a full disk, and a clear error for one that did not.

Lightning's TorchCheckpointIO serialises to memory, writes to a temporary file under the system
temp dir and moves it into place; when the run dir is on another filesystem the move is
copy-then-write, and a `kill -9` during the copy left `last.ckpt` empty or truncated, with the
previous good checkpoint gone. `AtomicCheckpointIO` streams `torch.save` into a temporary file in
the checkpoint's own directory, fsyncs it and renames it over the destination (lnrl.atomic): a kill
at any moment leaves the old complete file or the new one. Pass it to the Trainer as a plugin:

    Trainer(..., plugins=[AtomicCheckpointIO()])
    # trainer config:  plugins: [{_target_: lnrl.checkpoint_io.AtomicCheckpointIO}]

It loads with `weights_only=True` (torch's safe unpickler plus SAFE_GLOBALS), so a crafted
checkpoint cannot run code. Sharded checkpoints (directories written by torch.distributed.checkpoint
under FSDP) do not go through a CheckpointIO and are not made atomic by it.

`check_checkpoint(path)`, before resuming, reads a checkpoint completely (zip structure, every
CRC, the weights-only unpickle) and on damage raises CheckpointError naming the file, what is wrong
and the newest intact checkpoint in the same directory.
"""

from __future__ import annotations

import pathlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lnrl.atomic import atomic_open

__all__ = ["SAFE_GLOBALS", "AtomicCheckpointIO", "CheckpointError", "PoisonedStateError", "check_checkpoint",
           "load_weights_only", "newest_finite_checkpoint", "resume_hint", "tensors_finite"]

# Plain data beyond torch's weights-only defaults (tensors, dicts, lists, numbers, strings) that a
# Lightning checkpoint may hold: a callback's directory as a Path. Nothing here runs code.
SAFE_GLOBALS: list = [pathlib.PosixPath, pathlib.PurePosixPath]

# Lightning writes this inside a sharded checkpoint directory (lightning.fabric.utilities.load).
_SHARDED_META = "meta.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names it and the newest intact one."""


class PoisonedStateError(FloatingPointError):
    """Training stopped because the weights or optimizer state are no longer usable (non-finite, or
    overflowing after an update): nothing may save this state as a recovery point."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are atomic and whose loads are weights-only (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options are not supported")
        if not _is_local(path):  # s3://, gs://: the object store's own upload is atomic
            super().save_checkpoint(checkpoint, path)
            return
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # None would leave the choice to torch's default (and to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
        weights_only = True if weights_only is None else weights_only
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as e:
            if not _is_local(path):
                raise
            problem = _problem(Path(path))[0] or f"unreadable ({type(e).__name__}: {_first_line(e)})"
            raise CheckpointError(_message(Path(path), problem)) from e


def load_weights_only(path: str | Path, **kwargs: Any) -> Any:
    """torch.load with the weights-only unpickler and SAFE_GLOBALS: a file holding anything else (a
    crafted pickle that would run code) is refused unread, with a CheckpointError naming it."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: holds objects outside the weights-only allow-list, refused unread: not a "
                              f"checkpoint lnrl wrote, or a crafted one ({_first_line(e, 'global')})") from None


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """{"path", "global_step", "epoch"} of an intact checkpoint file or sharded directory; otherwise
    CheckpointError "<path>: cannot resume from it: <what is wrong>. <the newest intact one>"."""
    if not _is_local(path):  # s3://, gs://: nothing to read cheaply; Lightning's load reports damage
        return {"path": str(path), "global_step": None, "epoch": None}
    path = Path(path)
    problem, info = _problem(path)
    if problem is not None:
        raise CheckpointError(_message(path, problem))
    return info


def tensors_finite(obj: Any) -> bool:
    """Whether every floating-point tensor in a (nested) checkpoint or state is finite."""
    if isinstance(obj, torch.Tensor):
        t = obj.to_local() if hasattr(obj, "to_local") else obj
        return not t.is_floating_point() or bool(torch.isfinite(t).all())
    if isinstance(obj, dict):
        return all(tensors_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(tensors_finite(v) for v in obj)
    return True


def newest_finite_checkpoint(directory: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """{"path", "global_step", "epoch"} of the most recently written intact checkpoint in `directory`
    whose weights and optimizer state are all finite (file names in `exclude` skipped), or None.
    A sharded checkpoint directory counts when intact: its values are not read (it would take a process
    group); the NaN guard never lets a non-finite state reach a checkpoint in the first place."""
    directory = Path(directory)
    try:
        found = [p for p in directory.iterdir() if p.name not in exclude and not p.name.startswith(".")
                 and (p.suffix == ".ckpt" or (p / _SHARDED_META).is_file())]
    except OSError:
        return None
    for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        problem, info = _problem(p)
        if problem is not None:
            continue
        if p.is_file():
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            if not tensors_finite({k: ckpt.get(k) for k in ("state_dict", "optimizer_states")}):
                continue
        return info
    return None


def resume_hint(trainer: Any, exclude: tuple[str, ...] = ()) -> str:
    """Where a stopped run can resume from: the newest checkpoint with finite weights in the directories of
    the trainer's checkpoint callbacks (one sentence for an error message)."""
    dirs = sorted({str(cb.dirpath) for cb in getattr(trainer, "checkpoint_callbacks", []) or []
                   if getattr(cb, "dirpath", None)})
    if not dirs:
        return "No checkpoints are written (no checkpoint callback): start again from the starting model."
    found = [f for f in (newest_finite_checkpoint(d, exclude) for d in dirs) if f is not None]
    if not found:
        return (f"No checkpoint with finite weights in {', '.join(dirs)}: start again from the starting model "
                f"(without ckpt_path).")
    best = max(found, key=lambda f: Path(f["path"]).stat().st_mtime)
    return (f"The newest checkpoint with finite weights is {best['path']} (step {best['global_step']}): "
            f"resume with ckpt_path={best['path']} after changing what caused this.")


def _message(path: Path, problem: str) -> str:
    good = _newest_intact(path)
    if good is None:
        hint = (f"There is no intact checkpoint in {path.parent}: start without ckpt_path, "
                f"or pass another checkpoint")
    else:
        hint = (f"The newest intact checkpoint beside it is {good['path']} (step {good['global_step']}): "
                f"resume with ckpt_path={good['path']}")
    return f"{path}: cannot resume from it: {problem}. {hint}"


def _newest_intact(path: Path) -> dict[str, Any] | None:
    """The most recently modified intact checkpoint in path's directory, other than path."""
    try:
        siblings = [p for p in path.parent.iterdir()
                    if p.name != path.name and not p.name.startswith(".")
                    and (p.suffix == ".ckpt" or (p / _SHARDED_META).is_file())]
    except OSError:
        return None
    for p in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True):
        problem, info = _problem(p)
        if problem is None:
            return info
    return None


def _problem(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(what is wrong with the checkpoint at path, or None; its step and epoch when intact)."""
    if not path.exists():
        return "no such file", {}
    if path.is_dir():  # sharded: tensors in torch.distributed.checkpoint files, the rest in meta.pt
        if not (path / ".metadata").is_file() or (path / ".metadata").stat().st_size == 0:
            return "a directory without a complete sharded checkpoint (.metadata missing or empty)", {}
        target = path / _SHARDED_META
    else:
        target = path
    if not target.is_file():
        return f"{target.name} missing", {}
    size = target.stat().st_size
    if size == 0:
        return f"{_name(path, target)}empty (0 bytes: a write was cut short)", {}
    try:
        with zipfile.ZipFile(target) as z:
            bad = z.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        return f"{_name(path, target)}truncated or not a torch checkpoint ({size} bytes; {_first_line(e)})", {}
    if bad is not None:
        return f"{_name(path, target)}corrupt: member {bad} fails its CRC check", {}
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        return (f"{_name(path, target)}holds objects outside the weights-only allow-list, refused unread "
                f"({_first_line(e, 'global')})"), {}
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ...: all mean damaged
        return f"{_name(path, target)}unreadable ({type(e).__name__}: {_first_line(e)})", {}
    if not isinstance(obj, dict) or (path.is_file() and "state_dict" not in obj):
        return f"{_name(path, target)}not a Lightning checkpoint (no 'state_dict' entry)", {}
    return None, {"path": str(path), "global_step": obj.get("global_step"), "epoch": obj.get("epoch")}


def _name(path: Path, target: Path) -> str:
    return "" if target == path else f"{target.name}: "


def _first_line(e: BaseException, containing: str | None = None) -> str:
    """The informative line of an exception message (torch's run to many lines of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if containing is not None:
        lines = [ln for ln in lines if containing in ln.lower()] or lines
    return lines[0][:300] if lines else type(e).__name__


def _is_local(path: Any) -> bool:
    from fsspec.utils import get_protocol

    return get_protocol(str(path)) in ("file", "local")
