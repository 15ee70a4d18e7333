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
    assert names == ["handoff_8MiB", "wake_pingpong"]
    want = {"handoff_8MiB": ("ms", {"shmbus", "mp_queue", "mp_shared_memory", "iceoryx2", "rust"}),
            "wake_pingpong": ("us", {"shmbus", "mp_pipe", "iceoryx2", "rust"})}
    for sc in report["scenarios"]:
        unit, systems = want[sc["name"]]
        assert sc["unit"] == unit and sc["lower_is_better"] is True
        assert set(sc["results"]) == systems
        for system, v in sc["results"].items():
            assert set(v) >= {"median", "p99"}
            if v["median"] is None:
                assert v["unavailable"]  # says why
            else:
                assert isinstance(v["median"], float) and isinstance(v["p99"], float)
        # shmbus itself always runs
        assert sc["results"]["shmbus"]["median"] > 0
