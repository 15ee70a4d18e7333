"""`python -m shmbus.bench --quick` runs and writes the documented JSON shape (not the numbers)."""

import json
import subprocess
import sys


def test_bench_quick_json_shape(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "shmbus.bench", "--quick", "--no-rust", "--json",
                        str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["scenarios"]]
    queues = [f"queue_{size}_c{c}" for size in ("64B", "4MiB") for c in (1, 2, 4)]
    assert names == ["handoff_8MiB", "wake_pingpong"] + queues
    want = {"handoff_8MiB": ("ms", True, "shmbus",
                             {"shmbus", "mp_queue", "mp_shared_memory", "iceoryx2", "rust"}),
            "wake_pingpong": ("us", True, "shmbus", {"shmbus", "mp_pipe", "iceoryx2", "rust"})}
    for q in queues:
        want[q] = ("items/s", False, "mp_queue", {"shmbus", "mp_queue"})
    for sc in report["scenarios"]:
        unit, lower, baseline, systems = want[sc["name"]]
        assert sc["unit"] == unit and sc["lower_is_better"] is lower
        assert sc["baseline"] == baseline
        assert set(sc["results"]) == systems
        for system, v in sc["results"].items():
            assert set(v) >= {"median", "p99"}
            if v["median"] is None:
                assert v["unavailable"]  # says why
            else:
                assert isinstance(v["median"], float) and isinstance(v["p99"], float)
        # shmbus itself always runs, and so does multiprocessing.Queue
        assert sc["results"]["shmbus"]["median"] > 0
        if sc["name"] in queues:
            assert sc["results"]["mp_queue"]["median"] > 0
            # for rates, "p99" is the bad tail: at most the median
            for v in sc["results"].values():
                assert 0 < v["p99"] <= v["median"]
