"""Atomic file writes: whoever reads the destination (a resumed run, the next stage) finds the old
file or the new one, complete, never a part of one, whatever happens during the write.

The bytes go to a temporary file in the destination's own directory: a rename is atomic only within
one filesystem (across filesystems it becomes copy-then-write, and a `kill -9` during the copy left a
0-byte `last.ckpt`). The file is flushed and fsync'ed before `os.replace` puts it in place, and the
directory is fsync'ed after, so a power cut cannot leave the new name pointing at unwritten blocks.
Any failure part way (a full disk, an exception while producing the rows) removes the temporary file
and re-raises; the destination is untouched.

A process killed mid-write leaves its temporary file (`.<name>.<host>.<pid>.<random>.tmp`); the next
write to the same destination removes those whose process is gone, so repeated kills do not fill
the disk with partial checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_text"]

_HOST = socket.gethostname().replace(".", "_") or "host"
# New files get the permissions a plain open() would give them (mkstemp makes them 0600).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path` for writing ("w" or "wb"); on a clean exit it replaces
    `path` atomically, on an exception it is removed and `path` keeps its old content."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode={mode!r}; expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        e.add_note(f"lnrl: writing {path} failed; "
                   + ("its previous content is intact" if path.exists() else "nothing was written there"))
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see the module docstring)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777  # replacing a file keeps its permissions
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is done either way
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files left for `path` by processes of this host that no longer run."""
    prefix = f".{path.name}.{_HOST}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
