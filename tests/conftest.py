import os

import pytest

# No test may reach the network; hub lookups fail fast instead of retrying for ~30 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, request):
    """Each test gets its own empty conversion cache, except the real-model tests, which share the user's."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def run_cli(capsys):
    """Run `tjdkit ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from tjdkit.cli import main

    def run(*args, stdin=None):
        import io
        import sys

        old_stdin = sys.stdin
        if isinstance(stdin, bytes):
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        elif stdin is not None:
            sys.stdin = io.StringIO(stdin)
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdin = old_stdin
        out, err = capsys.readouterr()
        return code, out, err

    return run
