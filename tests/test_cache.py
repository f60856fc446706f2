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
