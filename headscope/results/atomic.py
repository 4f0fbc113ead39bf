"""Atomic file writes: write beside the target, fsync, then rename over it.

Guarantees (see docs/reliability.md):

- readers never see a half-written file: the data goes to a hidden temporary file
  ``.NAME.XXXXXXXX.partial`` in the target's directory, which is renamed over ``NAME`` only
  once it is complete and flushed to disk;
- an exception, Ctrl-C or SIGTERM (the CLI turns it into an exception) removes the temporary
  file and leaves the previous ``NAME`` (if any) untouched; only SIGKILL or a power cut can
  leave a ``.partial`` file behind, and every headscope reader skips those (:func:`is_temp_file`);
- permissions: a new file gets ``0666 & ~umask`` like any ``open()``; rewriting an existing
  file keeps that file's mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from headscope.errors import HeadscopeError

TEMP_SUFFIX = ".partial"
# temporaries of headscope < 0.2 were ``.NAME.XXXXXXXX<suffix>`` (suffix ".parquet", ".html", ...)
_LEGACY_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]+\.[a-z0-9_]{8}\.[A-Za-z0-9.]+$")
_UMASK_LOCK = threading.Lock()


def is_temp_file(path: str | Path) -> bool:
    """True for a temporary file of :func:`atomic_write` (current or older naming)."""
    name = Path(path).name
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or bool(_LEGACY_TEMP.match(name)))


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_dir(directory: str | Path, what: str) -> Path:
    """Raise a one-line error unless files can be created in ``directory`` -- or, where it does
    not exist yet, in its nearest existing ancestor (it is created when the first file is
    written). Creates nothing. ``what`` names the flag or file for the message."""
    directory = Path(directory).expanduser()
    existing = directory if str(directory) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HeadscopeError(f"cannot write {what}: {existing} is a file, not a directory. Choose another path.")
    try:  # probe for real: os.access says yes to root even where writes fail
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".headscope-probe-", suffix=TEMP_SUFFIX):
            pass
    except OSError as exc:
        raise HeadscopeError(f"cannot write {what} in {existing}: {exc.strerror or exc}. Choose a writable path.") from None
    return directory


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to ``path``.

    A crash or exception leaves the previous file (if any) untouched and no partial file.
    Raises :class:`HeadscopeError` with a one-line message if the directory is not writable.

    Args:
        path: the file to write.
        suffix: ignored (the temporary file always ends in ``.partial`` so that readers skip
            it); kept for callers that pass the target's suffix.
    """
    del suffix
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise HeadscopeError(
            f"cannot write {target}: {exc.strerror or exc}. Choose a writable output path."
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
