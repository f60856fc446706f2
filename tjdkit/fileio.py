"""Files: atomic writes (a reader sees the old file, the new file, or nothing, never half of one),
state trees without pickle, user-caused OS errors as one line, and whether the hub is reachable."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """Where tjdkit keeps what it computes once per machine (converted models, bench heads, kernel
    choices): ~/.cache/tjdkit, or $TJDKIT_CACHE."""
    return Path(os.environ.get("TJDKIT_CACHE") or Path.home() / ".cache" / "tjdkit").expanduser()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same directory and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same directory and a rename.

    A symlink is followed (the link stays, its target is replaced); a path that is not a regular
    file (a pipe, a terminal, /dev/stdout) is written in place: renaming over it would replace
    the device or pipe with a file.
    """
    path = Path(path)
    with user_errors(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if path.exists() and not path.is_file():
            with open(path, "wb") as handle:
                handle.write(data)
            return path
        real = Path(os.path.realpath(path))
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output file is an ordinary file
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


# ---- user-facing file errors, and checking outputs before the slow work ----------------------

USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG}


@contextlib.contextmanager
def user_errors(path: str | Path) -> Iterator[None]:
    """A full disk, a read-only place or a path that cannot be a file becomes one TjdkitError line.

    safetensors reports I/O failures as its own SafetensorError text, so that is matched too."""
    from tjdkit.errors import TjdkitError

    try:
        yield
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise TjdkitError(f"cannot write {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - only safetensors' I/O errors are converted; the rest re-raise
        text = str(exc)
        if type(exc).__name__ != "SafetensorError" or not any(word in text for word in ("StorageFull", "No space", "os error")):
            raise
        reason = "No space left on device" if ("StorageFull" in text or "No space" in text) else text.splitlines()[0]
        raise TjdkitError(f"cannot write {path}: {reason}") from None


def is_stdout(path: str | Path | None) -> bool:
    """`-` names standard output, as in most command-line tools."""
    return path is not None and str(path) == "-"


def check_output_file(path: str | Path | None, suffix: str | None = None, what: str = "output",
                      allow_stdout: bool = False) -> None:
    """Fail now, before any slow work, when `path` could not be written later: a directory, under
    a file, in a read-only place, or (with `suffix`) the wrong kind of file. `-` is stdout where allowed."""
    from tjdkit.errors import TjdkitError

    if path is None:
        return
    if is_stdout(path):
        if allow_stdout:
            return
        raise TjdkitError(f"{what} needs a file path ('-' writes to stdout only for --json)")
    path = Path(path).expanduser()
    if suffix is not None and path.suffix.lower() != suffix:
        raise TjdkitError(f"{what} writes a {suffix[1:].upper()} file: give a path ending in {suffix}, not {path}")
    if path.is_dir():
        raise TjdkitError(f"{path} is a directory: give a file path for {what}")
    if path.exists() and not path.is_file():
        return  # a pipe or a device (/dev/stdout): written in place
    _check_can_create(Path(os.path.realpath(path)).parent, path)


def check_output_dir(path: str | Path, force: bool = False, need_bytes: int = 0, what: str = "--out") -> Path:
    """`path` as a Path, after checking that a directory can be written there before any slow work:
    absent or an empty directory (or --force), not a file, writable, and with `need_bytes` free."""
    from tjdkit.errors import TjdkitError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise TjdkitError(f"{what} {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise TjdkitError(f"{path} already exists (use --force to replace it)")
    base = _check_can_create(path.parent, path)
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise TjdkitError(f"not enough disk space for {path}: needs ~{_gib(need_bytes)}, {_gib(free)} free")
    return path


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**28 else f"{count / 2**20:.1f} MiB"


def _check_can_create(directory: Path, target: Path) -> Path:
    """The nearest existing ancestor of `directory` must be a directory we can create files in (tried, not
    guessed from mode bits: root ignores them, read-only mounts and immutable directories do not)."""
    from tjdkit.errors import TjdkitError

    base = Path(directory).absolute()
    while not base.exists():
        if base.is_symlink():
            raise TjdkitError(f"cannot write {target}: {base} is a broken link")
        base = base.parent
    if not base.is_dir():
        raise TjdkitError(f"cannot write {target}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tjdkit-write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TjdkitError(f"cannot write {target}: {base}: {exc.strerror or exc}") from None
    return base


def temp_dir_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success it becomes `final`.

    On any exception (Ctrl-C included) the temp directory is removed, so `final` appears
    complete or not at all. An existing `final` is swapped out in one step (exchange_paths),
    so a reader, or a kill at any instant, finds the old complete directory or the new one;
    the old one is deleted after the swap. Temp directories of killed writers are swept first.
    """
    final = Path(final)
    with user_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{temp_dir_prefix(final)}{os.getpid()}-", dir=final.parent))
    try:
        with user_errors(final):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved model or run is an ordinary directory
            if final.is_dir() and not final.is_symlink():
                exchange_paths(tmp, final)  # tmp now holds the old directory: removed below
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux 4.7+): setting it
    even for an instant would give files that another thread creates then the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two directory entries in one step: renameat2(RENAME_EXCHANGE) on Linux (Python has no
    binding for it, hence ctypes). Elsewhere, or on a file system without it: b moves aside, a
    takes its place, and the old b lands at a, leaving b absent for the moment between two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = a.with_name(a.name + "-old")
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)


def remove_stale_temp_dirs(final: str | Path) -> list[Path]:
    """Delete temp directories left by killed writers of `final` (their process is gone)."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for candidate in final.parent.glob(temp_dir_prefix(final) + "*"):
        pid_text = candidate.name[len(temp_dir_prefix(final)) :].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def directory_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---- nested state as safetensors + JSON -------------------------------------------------------
# Optimizer and RNG state are trees of dicts, lists and tensors; torch.save would pickle them,
# and loading a pickle runs whatever code it names. safetensors holds only flat tensors, so the
# tree's shape goes to JSON beside it (hand-written: no library stores such a tree without pickle).


def save_state_tree(directory: str | Path, name: str, tree) -> None:
    """Write `tree` as directory/name.safetensors (its tensors) + directory/name.json (the rest).

    Allowed leaves: tensors, None, bool, int, float (inf and nan too), str; containers: dict
    (any str/int keys), list, tuple. Call it inside an atomic_directory: both files or neither.
    """
    from safetensors.torch import save_file

    tensors: dict = {}
    encoded = _encode_tree(tree, tensors)
    save_file({key: value.detach().contiguous().cpu().clone() for key, value in tensors.items()},
              str(Path(directory) / f"{name}.safetensors"))
    (Path(directory) / f"{name}.json").write_text(json.dumps(encoded, allow_nan=False))


def load_state_tree(directory: str | Path, name: str):
    """The tree save_state_tree wrote; ValueError when either file is missing, corrupt or does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        tensors = load_file(str(directory / f"{name}.safetensors"))
        encoded = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, SafetensorError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return _decode_tree(encoded, tensors)


def _encode_tree(node, tensors: dict):
    import math

    import torch

    if isinstance(node, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = node
        return {"tensor": key}
    if isinstance(node, float) and not math.isfinite(node):
        return {"float": repr(node)}  # 'inf', '-inf', 'nan'
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, (list, tuple)):
        return {"tuple" if isinstance(node, tuple) else "list": [_encode_tree(item, tensors) for item in node]}
    if isinstance(node, dict):
        if not all(isinstance(key, (str, int)) and not isinstance(key, bool) for key in node):
            raise TypeError(f"state keys must be str or int, got {[type(k).__name__ for k in node]}")
        return {"dict": [[key, _encode_tree(value, tensors)] for key, value in node.items()]}
    raise TypeError(f"cannot store a {type(node).__name__} in a state tree")


def _decode_tree(node, tensors: dict):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (kind, value), = node.items()
        if kind == "tensor" and isinstance(value, str) and value in tensors:
            return tensors[value]
        if kind == "float" and value in ("inf", "-inf", "nan"):
            return float(value)
        if kind in ("list", "tuple") and isinstance(value, list):
            items = [_decode_tree(item, tensors) for item in value]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            return {_checked_key(key): _decode_tree(item, tensors) for key, item in value}
    raise ValueError(f"unexpected entry in the state file: {json.dumps(node)[:80]}")


def _checked_key(key):
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        return key
    raise ValueError(f"bad key in the state file: {key!r}")


def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds instead of retrying for ~30 s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
