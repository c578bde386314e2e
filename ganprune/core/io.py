"""Atomic file writes: a kill mid-write never leaves a half-written output behind."""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager

import torch
import yaml

from ganprune.core.errors import UserError


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path) -> None:
    """Serialized in memory first: torch's own file writer reports a full disk as an internal assertion
    ("unexpected pos"), a plain write says which error it was."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def atomic_write_bytes(path, data) -> None:
    """``data`` written atomically; a failed write (no space left, a file-size limit, an I/O error) is one
    line naming the file and the cause, and leaves the old file, if any, untouched."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
    except OSError as exc:
        raise UserError(f"{os.fspath(path)}: cannot write ({exc.strerror or exc})") from None


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_yaml(path, data) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
