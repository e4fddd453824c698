"""Atomic file writes: the one way zoo replaces a file a user may be reading or may lose.

Everything is written to a temporary name in the target's folder and renamed over the target only
once complete, so a crash, a kill or a full disk leaves either the old file or the new one, never
half of one. Used for run directories, checkpoints, the feature cache and exports.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zoo.errors import UsageError, WorkFailed, ZooError


def _default_mode() -> int:
    """0666 minus the umask: the mode open() would have given the file (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # the user's choice of folder: a usage error


def write_failure(path: Path | str, e: OSError) -> ZooError:
    """One sentence for a write the operating system refused: a read-only or forbidden folder (exit 2), or a
    full disk and other failures of the machine (exit 1)."""
    reason = e.strerror or type(e).__name__
    if e.errno in NOT_WRITABLE:
        return UsageError(f"Cannot write {path} ({reason}): choose a folder you can write to.")
    return WorkFailed(f"Could not write {path} ({reason}); the file it would have replaced is unchanged: free "
                      "some space (or fix the disk) and run the command again (`zoo finetune`: with --resume).")


def _rust_os_error(e: Exception) -> OSError | None:
    """The OSError inside an error of a Rust-backed writer (safetensors says "I/O error: ... (os error 28)")."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError in the block, or one wrapped by a Rust-backed writer, into write_failure's sentence."""
    try:
        yield
    except OSError as e:
        raise write_failure(path, e) from None
    except Exception as e:
        inner = _rust_os_error(e)
        if inner is None:
            raise
        raise write_failure(path, inner) from None


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path`; whatever the block writes there replaces `path` when it ends.

    `suffix` is for writers that insist on a file extension (torch.export.save wants .pt2). A write
    the operating system refuses (read-only folder, full disk) is one sentence (write_failure), and
    leaves `path` as it was.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
            yield tmp
            with open(tmp, "rb") as f:  # on disk before the rename, so a power cut cannot leave an empty file
                os.fsync(f.fileno())
            os.chmod(tmp, _default_mode())
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, write: Callable[[Path], Any], suffix: str = ".tmp") -> None:
    """write(tmp_path) then rename: for writers that take a file name (safetensors, torch.save)."""
    with atomic_path(path, suffix) as tmp:
        write(tmp)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def remove_leftovers(folder: Path | str) -> None:
    """Temporary files of a process that was killed mid-write."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
