"""Messages per second between two Python processes: `send`/`recv` one message per call against
`send_many`/`recv_many` in batches. Prints the rates of two rounds of each (a measurement, not a
test: figures vary with the machine).

    python examples/batch_rate.py [messages]
"""
import os
import subprocess
import sys
import time

import shmbus

PRODUCER = """
import sys
import numpy as np
import shmbus
name, n, batched = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
pub = shmbus.Topic(name, capacity=1024, overflow="back-pressure").publisher("<u8")
if batched:
    for start in range(0, n, 1000):
        pub.send_many(np.arange(start, min(start + 1000, n), dtype="<u8"))
else:
    for i in range(n):
        pub.send(i)
"""


def rate(name: str, n: int, batched: bool) -> float:
    """Messages per second received from a producer process (from the first one on)."""
    with shmbus.Topic(name, capacity=1024, overflow="back-pressure").subscriber("<u8") as sub:
        child = subprocess.Popen([sys.executable, "-c", PRODUCER, name, str(n), "1" if batched else "0"])
        try:
            got, start = 0, None
            while got < n:
                if batched:
                    values = sub.recv_many(4096, timeout=10)
                    if values[0] != got:
                        raise RuntimeError(f"expected message {got}, got {values[0]}")
                    got += len(values)
                else:
                    value = sub.recv(timeout=10).value
                    if value != got:
                        raise RuntimeError(f"expected message {got}, got {value}")
                    got += 1
                if start is None:
                    start = time.perf_counter()
            return n / (time.perf_counter() - start)
        finally:
            child.wait(10)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    name = f"batch-rate-{os.getpid()}"
    for batched in (False, True, False, True):
        label = "send_many / recv_many" if batched else "send / recv          "
        print(f"{label} {rate(name, n, batched) / 1e6:6.2f} M msg/s")


if __name__ == "__main__":
    main()
