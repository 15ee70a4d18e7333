"""Curves of the `compare` harness's scaling scenarios, from its JSON (`compare --json PATH`).

    python scripts/plot_performance.py [--out DIR] RESULTS.json [MORE.json ...]
    python scripts/plot_performance.py --tables RESULTS.json [MORE.json ...]

Later files override earlier ones for a scenario they both hold. Writes one PNG per family
to DIR (default docs/img): fan-out latency and throughput against subscribers, latency and
throughput against message size, bulk GB/s against array size, throughput against
publishers. Medians; a scenario the harness refused (a system beat its floor) is drawn with
hollow markers and named in the title. With --tables, prints the families' markdown tables
(medians, p99s, shmbus's ratios to the floor and to iceoryx2) instead.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

SYSTEMS = [  # (name in the JSON, label, colour, marker)
    ("floor", "floor (bare mechanism)", "#555555", "s"),
    ("shmbus", "shmbus", "#1f77b4", "o"),
    ("iceoryx2", "iceoryx2", "#ff7f0e", "^"),
    ("uds", "Unix sockets", "#2ca02c", "v"),
]

SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}


def size_bytes(text):
    m = re.fullmatch(r"(\d+)(B|KiB|MiB)", text)
    return int(m.group(1)) * SIZE_UNITS[m.group(2)] if m else None


def size_label(b):
    for unit in ("MiB", "KiB"):
        if b >= SIZE_UNITS[unit] and b % SIZE_UNITS[unit] == 0:
            return f"{b // SIZE_UNITS[unit]} {unit}"
    return f"{b} B"


# family: (file, regex of the name, x parser, x label, title, y label, x is a size)
FAMILIES = [
    ("fanout_latency", r"fanout_latency_(\d+)", int, "subscriber processes",
     "Fan-out latency: publish to the last subscriber", "ns (median)", False),
    ("fanout_throughput", r"fanout_throughput_(\d+)", int, "subscriber processes",
     "Fan-out throughput: 64-byte messages every subscriber receives",
     "million messages/s (median)", False),
    ("msg_latency", r"msg_latency_(\w+)", size_bytes, "message size (in the slot)",
     "One-way busy latency (round trip / 2) against message size", "ns (median)", True),
    ("msg_throughput", r"msg_throughput_(\w+)", size_bytes, "message size (in the slot)",
     "Throughput against message size, one producer, one consumer",
     "million messages/s (median)", True),
    ("bulk", r"bulk_(\w+)", size_bytes, "array size",
     "Array hand-off: producer writes, consumer reads every byte", "GB/s (median)", True),
    ("publishers", r"publishers_throughput_(\d+)", int, "publisher processes on one topic",
     "Several publishers into one subscriber, 64-byte messages",
     "million messages/s (median)", False),
]


def load(paths):
    scenarios = {}
    for p in paths:
        with open(p) as f:
            for sc in json.load(f)["scenarios"]:
                scenarios[sc["name"]] = sc
    return scenarios


def plot_family(scenarios, family, out):
    stem, pattern, parse, xlabel, title, ylabel, is_size = family
    points = []  # (x, scenario)
    for name, sc in scenarios.items():
        m = re.fullmatch(pattern, name)
        if m and parse(m.group(1)) is not None:
            points.append((parse(m.group(1)), sc))
    if len(points) < 2:
        print(f"{stem}: fewer than two scenarios in the JSON, skipped", file=sys.stderr)
        return None
    points.sort(key=lambda p: p[0])
    xs = [x for x, _ in points]
    refused = [sc["name"] for _, sc in points if sc.get("refused")]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for sys_name, label, colour, marker in SYSTEMS:
        line = [(x, sc["results"][sys_name]["median"]) for x, sc in points
                if sys_name in sc["results"]]
        if not line:
            continue
        ax.plot([x for x, _ in line], [y for _, y in line], color=colour, label=label,
                marker=marker, markersize=6, linewidth=1.8,
                linestyle="--" if sys_name == "floor" else "-")
        bad = [(x, sc["results"][sys_name]["median"]) for x, sc in points
               if sc.get("refused") and sys_name in sc["results"]]
        if bad:
            ax.scatter([x for x, _ in bad], [y for _, y in bad], marker=marker, s=36,
                       facecolors="white", edgecolors=colour, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([size_label(x) if is_size else str(x) for x in xs])
    # Plain numbers on the log axis (10, 20, 0.5), minor ones too when the range is narrow.
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if hi / lo < 30 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (", lower is better" if points[0][1]["lower_is_better"]
                            else ", higher is better"))
    ax.set_title(title + (f"\nREFUSED: {', '.join(refused)}" if refused else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def fmt(x):
    if x >= 100:
        return f"{x:,.0f}".replace(",", " ")
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(scenarios, family):
    """A markdown table of the family: medians (p99), shmbus / floor, shmbus / iceoryx2."""
    stem, pattern, parse, *_ = family
    rows = sorted((parse(m.group(1)), sc) for name, sc in scenarios.items()
                  if (m := re.fullmatch(pattern, name)) and parse(m.group(1)) is not None)
    if not rows:
        return ""
    systems = [s for s, *_ in SYSTEMS if any(s in sc["results"] for _, sc in rows)]
    head = ["scenario", "unit"] + systems + ["shmbus ÷ floor", "shmbus ÷ iceoryx2"]
    lines = ["| " + " | ".join(f"`{h}`" if h in systems else h for h in head) + " |",
             "|---|---|" + "---:|" * (len(head) - 2)]
    for _, sc in rows:
        res = sc["results"]
        arrow = "↓" if sc["lower_is_better"] else "↑"
        cells = [f"`{sc['name']}`" + (" (refused)" if sc.get("refused") else ""),
                 f"{sc['unit']} {arrow}"]
        for s in systems:
            r = res.get(s)
            cells.append(f"{fmt(r['median'])} (p99 {fmt(r['p99'])})" if r else "-")
        shm = res.get("shmbus", {}).get("median")
        for base in ("floor", "iceoryx2"):
            b = res.get(base, {}).get("median")
            cells.append(f"{shm / b:.2f}" if shm and b else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--tables", action="store_true",
                    help="print the markdown tables of docs/performance.md instead of plotting")
    ap.add_argument("json", nargs="+")
    args = ap.parse_args()
    scenarios = load(args.json)
    if args.tables:
        for family in FAMILIES:
            print(table(scenarios, family))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        path = plot_family(scenarios, family, args.out)
        if path:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
