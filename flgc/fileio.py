"""Atomic file writes: write a temp file next to the target, then rename it over the target.

A reader (or a kill at any moment) sees the old file or the complete new one, never half a file.
"""
import contextlib
import os
import stat
import tempfile

from .errors import UsageError


def check_output(path, force, flag="--out"):
    """Refuse (UsageError) an output file path that names a directory, or an existing file unless `force`."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory; give the path of a file")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")


def _permissions(path):
    """The permission bits `path` keeps: those it has now, or those a new file gets under the umask (a
    temporary file is created private, 0600, and would otherwise pass that on)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def publish(temp, path):
    """Move the finished file `temp` to `path` in one rename, its bytes flushed to disk first and its
    permissions those `path` has (or a new file would get)."""
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(temp, _permissions(path))
    os.replace(temp, path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; once the block has written it, it becomes `path`.

    An exception inside the block removes the temporary file and leaves `path` as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        yield temp
        publish(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
