"""examples/image_consumer.py receives the frames of the Rust image_transfer example."""

import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import REPO


def _image_transfer():
    env = os.environ.get("SHMBUS_IMAGE_TRANSFER")
    for p in ([pathlib.Path(env)] if env else []) + [
            REPO / "target" / "debug" / "examples" / "image_transfer",
            REPO / "target" / "release" / "examples" / "image_transfer"]:
        if p.exists():
            return p
    pytest.skip("the Rust example is not built: cargo build --example image_transfer")


def _read_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) == int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big")
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = int.from_bytes(ihdr[:4], "big"), int.from_bytes(ihdr[4:8], "big")
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_python_consumer_of_the_rust_image_transfer(prefix, tmp_path):
    exe = _image_transfer()
    png = tmp_path / "frame.png"
    size = ["--frames", "20", "--width", "64", "--height", "48"]
    consumer = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "image_consumer.py"), "--topic", prefix,
         "--png", str(png), "--timeout", "20", *size],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer = subprocess.run([str(exe), "producer", "--topic", prefix, "--consumers", "1",
                               "--fps", "0", *size], capture_output=True, text=True, timeout=60)
    out, err = consumer.communicate(timeout=60)
    assert producer.returncode == 0, producer.stderr
    assert consumer.returncode == 0, err
    assert "received 20 frames of 64x48, 0 bad" in out
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from image_consumer import expected_frame
    finally:
        sys.path.pop(0)
    assert np.array_equal(_read_png(png), expected_frame(64, 48, 10))
