"""A Python consumer of the frames `cargo run --release --example image_transfer` publishes.

Run it with the same ``--topic`` prefix and frame size as the Rust producer, in either order::

    python examples/image_consumer.py --topic demo --frames 100 --width 640 --height 480 --png out.png
    cargo run --release --example image_transfer -- producer --topic demo --consumers 1 \\
        --frames 100 --width 640 --height 480 --fps 0

It subscribes to ``<topic>.frames`` (an array topic of ``[height, width, 3]`` ``u8`` frames with
the Rust ``FrameMeta`` as metadata, read through a structured dtype of the same layout), tells
the producer it is ready through the ``<topic>.ready`` semaphore, checks every byte of every
frame against the producer's pattern (zero-copy: the numpy array is the shared block), and
writes the middle frame as a PNG made with numpy and zlib only. Exits non-zero if a frame is
wrong, missing or late.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib

import numpy as np

import shmbus

#: `FrameMeta` of examples/image_transfer.rs (`#[repr(C)]`): the same fields, offsets and size.
FRAME_META = np.dtype([("frame", "<u8"), ("width", "<u4"), ("height", "<u4"),
                       ("send_ns", "<u8")], align=True)
#: The type name the Rust example records for it (`std::any::type_name`).
FRAME_META_TYPE = "image_transfer::FrameMeta"


def expected_frame(width: int, height: int, frame: int) -> np.ndarray:
    """The producer's `render`: row pattern plus a per-row offset, the frame number in the
    first 8 bytes."""
    i = np.arange(width * 3)
    pattern = ((i // 3) + 85 * (i % 3)).astype(np.uint8)
    offsets = ((2 * np.arange(height) + 3 * frame) & 0xFF).astype(np.uint8)
    img = (pattern[None, :] + offsets[:, None]).astype(np.uint8)  # wraps like `wrapping_add`
    flat = img.reshape(-1)
    flat[:8] = np.frombuffer(struct.pack("<Q", frame), dtype=np.uint8)
    return img.reshape(height, width, 3)


def write_png(path: str, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG of `rgb` ([h, w, 3] u8), with numpy and zlib only."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + w * 3), dtype=np.uint8)  # filter byte 0 (none) on every row
    raw[:, 1:] = rgb.reshape(h, w * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
        f.write(chunk(b"IEND", b""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topic", required=True, help="the producer's --topic prefix")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--png", help="where to write the middle frame")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a frame")
    a = ap.parse_args(argv)

    # The producer's topic settings (frame_topic in image_transfer.rs): explicit settings are
    # requirements, so whichever side creates the topic, both agree.
    topic = shmbus.Topic(f"{a.topic}.frames", capacity=4, overflow="backpressure", max_held=1,
                         max_subscribers=8, timestamps=True)
    sub = topic.array_subscriber(FRAME_META, type_name=FRAME_META_TYPE)
    ready = shmbus.Semaphore(f"{a.topic}.ready", value=0)
    ready.release()  # subscribed: the producer may start

    png_frame = a.frames // 2
    latencies = []
    bad = 0
    for n in range(a.frames):
        with sub.recv(timeout=a.timeout) as s:
            now = time.time_ns()
            meta = s.meta
            img = s.array
            if int(meta["frame"]) != n or img.shape != (a.height, a.width, 3):
                print(f"frame {n}: got frame {int(meta['frame'])} of shape {img.shape}",
                      file=sys.stderr)
                return 1
            latencies.append((now - int(meta["send_ns"])) / 1e3)
            if not np.array_equal(img, expected_frame(a.width, a.height, n)):
                bad += 1
            if a.png and n == png_frame:
                write_png(a.png, img)
            del img
    lat = np.asarray(latencies)
    print(f"received {a.frames} frames of {a.width}x{a.height}, {bad} bad; latency median "
          f"{np.median(lat):.0f} us, p99 {np.percentile(lat, 99):.0f} us"
          + (f"; frame {png_frame} written to {a.png}" if a.png else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
