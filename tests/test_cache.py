"""The conversion cache is atomic: an interrupted or killed conversion is never reused."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.processes import sigkill_once_exists
from tjdkit.fileio import atomic_directory, atomic_write_text
from tjdkit.models import cache as cache_mod
from tjdkit.models.cache import GgufSource, cached_entries, ensure_converted, entry_dir, is_complete

FAKE = GgufSource(key="fake-model", label="fake", path=Path("/nonexistent/fake.gguf"))


@pytest.fixture(autouse=True)
def fake_gguf_header(monkeypatch):
    """FAKE names no file: its header check reports weights of 16 bytes, as fake_convert writes."""
    real = cache_mod.gguf_float32_bytes
    monkeypatch.setattr(cache_mod, "gguf_float32_bytes", lambda path: 16 if path == FAKE.path else real(path))


def fake_convert(gguf_path, out_dir, stage):
    stage("writing")
    (out_dir / "config.json").write_text(json.dumps({"model_type": "fake"}))
    (out_dir / "model.safetensors").write_bytes(b"\0" * 16)


def test_atomic_write_text_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_successful_conversion_is_reused(monkeypatch):
    calls = []
    monkeypatch.setattr(cache_mod, "_convert_gguf", lambda *a: (calls.append(1), fake_convert(*a)))
    stages = []
    path = ensure_converted(FAKE, on_stage=stages.append)
    assert is_complete(path) and path == entry_dir(FAKE)
    assert ensure_converted(FAKE) == path
    assert len(calls) == 1 and stages == ["writing"]
    assert [entry.name for entry, _ in cached_entries()] == ["fake-model"]


def test_interrupted_conversion_leaves_no_cache(monkeypatch):
    def interrupted(gguf_path, out_dir, stage):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_converted(FAKE)
    assert not entry_dir(FAKE).exists()
    assert list(entry_dir(FAKE).parent.iterdir()) == []


def test_directory_without_manifest_is_not_trusted(monkeypatch):
    entry = entry_dir(FAKE)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")  # e.g. copied by hand, or an old crash
    assert not is_complete(entry)
    monkeypatch.setattr(cache_mod, "_convert_gguf", fake_convert)
    ensure_converted(FAKE)
    assert json.loads((entry / "config.json").read_text()) == {"model_type": "fake"}


def test_killed_conversion_is_not_reused(tmp_path, monkeypatch):
    """SIGKILL a real process mid-conversion: no cache entry appears, and the next run redoes it."""
    marker = tmp_path / "half-written"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from tjdkit.models import cache
        from tjdkit.models.cache import GgufSource

        def slow(gguf_path, out_dir, stage):
            (out_dir / "config.json").write_text("{{}}")
            Path({str(marker)!r}).write_text(str(out_dir))
            time.sleep(60)

        cache._convert_gguf = slow
        cache.gguf_float32_bytes = lambda path: 16
        cache.ensure_converted(GgufSource(key="fake-model", label="fake", path=Path("/nonexistent/fake.gguf")))
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    sigkill_once_exists(process, marker, timeout=60)
    leftover = Path(marker.read_text())
    assert leftover.exists()  # SIGKILL gives no chance to clean up ...
    assert not entry_dir(FAKE).exists()  # ... but the cache entry was never created
    assert cached_entries() == []
    monkeypatch.setattr(cache_mod, "_convert_gguf", fake_convert)
    path = ensure_converted(FAKE)
    assert is_complete(path)
    assert not leftover.exists()  # the dead process's temp directory is swept away


REPLACER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tjdkit.fileio import atomic_directory

    final, ready = Path(sys.argv[1]), Path(sys.argv[2])
    version = 0
    while True:  # replace `final` again and again, as `factorize --out final --force` does once
        version += 1
        with atomic_directory(final) as tmp:
            for index in range(40):
                (tmp / f"part{index}.bin").write_bytes(str(version).encode() * 2000)
            (tmp / "complete.json").write_text(str(version))
        ready.touch()
    """
)


def assert_whole(directory: Path) -> None:
    """One complete version: every part, all from the version complete.json names."""
    assert directory.is_dir(), f"{directory} is missing"
    version = (directory / "complete.json").read_text()
    parts = sorted(directory.glob("part*.bin"))
    assert len(parts) == 40 and all(part.read_bytes() == version.encode() * 2000 for part in parts)


def test_replacing_a_directory_is_atomic_under_sigkill_at_any_moment(tmp_path):
    """Kill a writer that keeps replacing X at 25 random moments: X is always a whole version, never gone
    or half-deleted; the killed writers' temp directories are swept by the next writer."""
    import random
    import signal
    import time

    final, ready = tmp_path / "X", tmp_path / "ready"
    with atomic_directory(final) as tmp:
        for index in range(40):
            (tmp / f"part{index}.bin").write_bytes(b"0" * 2000)
        (tmp / "complete.json").write_text("0")
    chance = random.Random(0)
    for _ in range(25):
        ready.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", REPLACER, str(final), str(ready)], env=dict(os.environ))
        try:
            deadline = time.time() + 60
            while not ready.exists():  # at least one replacement done, then kill somewhere in a later one
                assert process.poll() is None and time.time() < deadline
                time.sleep(0.01)
            time.sleep(chance.uniform(0, 0.05))
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        assert_whole(final)
    with atomic_directory(final) as tmp:  # the next writer sweeps what the killed ones left
        (tmp / "complete.json").write_text("last")
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("ready",)] == ["X"]
    assert (final / "complete.json").read_text() == "last"


def test_exchange_without_renameat2_still_never_half_deletes(tmp_path, monkeypatch):
    """Where the kernel or file system lacks RENAME_EXCHANGE, the fallback swaps by renames: X is
    never a partly deleted directory."""
    import ctypes

    from tjdkit import fileio

    class NoRenameat2:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: NoRenameat2())
    final = tmp_path / "X"
    for version in ("1", "2"):
        with atomic_directory(final) as tmp:
            (tmp / "complete.json").write_text(version)
    assert (final / "complete.json").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["X"]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a"), (b / "which").write_text("b")
    fileio.exchange_paths(a, b)
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
