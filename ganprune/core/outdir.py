"""An output folder that resumable runs share: one run at a time, and finished-stage markers that are
trusted only while the stage's outputs are still the ones it wrote.

``run_lock(out)`` holds ``out/.lock`` (it records the holder's pid) with an OS file lock for the duration
of a run: a second run into the same folder is refused in one line while the first is alive, and a lock
left by a killed run (kill -9, power loss) is taken over because the OS released it with the process.

``write_marker`` records the sha256 of every output of a stage beside its summary; ``marker_problem``
says why a marker cannot be trusted (missing outputs, changed bytes), so a deleted ``pruned_G.pt`` re-runs
the prune stage instead of being skipped as "done".
"""
from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
from contextlib import contextmanager

import yaml

from ganprune.core.errors import UserError
from ganprune.core.io import atomic_write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: fall back to the recorded pid alone
    fcntl = None

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    except (OSError, OverflowError):
        return False
    return True


def _holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}


def _refuse(out: str, holder: dict):
    who = f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")
    since = f", started {holder['started']}" if holder.get("started") else ""
    raise UserError(f"{out}: in use by another ganprune run ({who}{since}); wait for it to finish or choose "
                    f"another --out (if that process is gone, delete {os.path.join(out, LOCK_NAME)})")


@contextmanager
def run_lock(out):
    """Hold ``out/.lock`` while the block runs; refuse if a live run holds it (see the module docstring)."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if fcntl is None:  # pragma: no cover
        holder = _holder(path)
        if holder.get("pid") and holder.get("host") == me["host"] and _pid_alive(int(holder["pid"])):
            _refuse(out, holder)
        atomic_write_text(path, yaml.safe_dump(me))
        try:
            yield
        finally:
            if _holder(path).get("pid") == me["pid"]:
                os.remove(path)
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            _refuse(out, _holder(path))
        try:   # the holder before us may have removed the file we locked: lock the one on disk
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, yaml.safe_dump(me).encode())
        yield
    finally:
        try:
            os.remove(path)
        finally:
            os.close(fd)


def one_run_at_a_time(command: str):
    """Decorator for ``fn(config, out=None, ...)`` (a pipeline run): its paths are checked
    (``ganprune.core.paths.check_paths``) and its output folder locked (``run_lock``) before it starts."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(config, out=None, *args, **kwargs):
            from ganprune.core.paths import check_paths
            options = {str(k).replace("-", "_"): v for k, v in (config or {}).items()} \
                if isinstance(config, dict) else {}
            target = out or options.get("out")
            if not isinstance(target, (str, os.PathLike)) or not os.fspath(target):
                return fn(config, out, *args, **kwargs)   # the run itself says what is missing
            check_paths(command, {**options, "out": target})
            with run_lock(target):
                return fn(config, out, *args, **kwargs)
        return wrapper
    return deco


# --------------------------------------------------------------------------- stage markers

def file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_marker(out, marker, summary: dict, outputs) -> None:
    """The stage's ``summary`` plus the sha256 of each of its ``outputs`` (paths relative to ``out``)."""
    hashes = {rel: file_hash(os.path.join(out, rel)) for rel in outputs if os.path.isfile(os.path.join(out, rel))}
    atomic_write_text(marker, yaml.safe_dump({**summary, "outputs": hashes}, sort_keys=False))


def marker_problem(out, marker, outputs=()) -> str | None:
    """Why the finished-stage ``marker`` is not to be trusted (None: it is). A marker written before hashes
    were recorded is trusted when the stage's ``outputs`` exist."""
    try:
        with open(marker, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return "its marker is unreadable"
    recorded = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        missing = [rel for rel in outputs if not os.path.exists(os.path.join(out, rel))]
        return f"{missing[0]} is missing" if missing else None
    for rel, digest in recorded.items():
        path = os.path.join(out, str(rel))
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if file_hash(path) != digest:
            return f"{rel} changed since the stage wrote it"
    return None
