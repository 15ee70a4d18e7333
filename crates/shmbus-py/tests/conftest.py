"""Fixtures: unique shmbus names per test, removed afterwards even when the test fails."""

import itertools
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

SHM = pathlib.Path("/dev/shm")
REPO = pathlib.Path(__file__).resolve().parents[3]
_counter = itertools.count()


@pytest.fixture
def prefix():
    p = f"pyt{os.getpid()}-{next(_counter)}"
    yield p
    for f in SHM.glob(f"shmbus.{p}*"):
        try:
            f.unlink()
        except FileNotFoundError:
            pass


@pytest.fixture
def tmpfile(tmp_path):
    yield tmp_path / "array.bin"


def _peer_path():
    env = os.environ.get("SHMBUS_TEST_PEER")
    if env:
        return pathlib.Path(env)
    return REPO / "target" / "debug" / "shmbus-test-peer"


@pytest.fixture
def peer():
    """Runs the Rust test peer (`tests/src/bin/shmbus-test-peer.rs`) with arguments."""
    path = _peer_path()
    if not path.exists():
        pytest.skip(f"Rust test peer not built ({path}); `cargo build -p shmbus-tests` builds it")

    def run(*args, timeout=30, **kw):
        return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, **kw)

    run.path = str(path)
    return run


def python_child(code, *args, **kw):
    """An independent interpreter running `code`."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)
