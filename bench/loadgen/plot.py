#!/usr/bin/env python3
"""Delivered rate against p99 latency, per server, from `loadgen run --json FILE`.

Usage: python3 plot.py results.json [out.png]

One panel per fan-out scenario in the file (fanout, cluster2, cluster3): for every server,
the median over the runs of each step's delivered rate (x) and p99 (y, log scale). A step
marked saturated is drawn hollow.
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"trestle": "tab:blue", "node": "tab:orange"}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"
    with open(src) as f:
        doc = json.load(f)
    # scenario -> server -> rate -> [step rows of every run]
    steps = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in doc["runs"]:
        scen = run["scenario"]
        if scen != "fanout" and not scen.startswith("cluster"):
            continue
        for row in run["steps"]:
            steps[scen][run["server"]][row["rate"]].append(row)
    if not steps:
        sys.exit("no fan-out steps in " + src)
    scens = sorted(steps, key=lambda s: (s != "fanout", s))
    fig, axes = plt.subplots(1, len(scens), figsize=(6 * len(scens), 4.5), squeeze=False)
    for ax, scen in zip(axes[0], scens):
        for server, by_rate in sorted(steps[scen].items()):
            xs, ys, sat = [], [], []
            for rate in sorted(by_rate):
                rows = by_rate[rate]
                med = lambda k: statistics.median(r[k] for r in rows if r.get(k) is not None)  # noqa: E731
                xs.append(med("delivered_per_s"))
                ys.append(med("p99_ms"))
                sat.append(any(r.get("saturated") for r in rows))
            color = COLORS.get(server)
            ax.plot(xs, ys, "-", color=color, label=server)
            for x, y, s in zip(xs, ys, sat):
                ax.plot([x], [y], "o", color=color, markerfacecolor="none" if s else color)
        title = "fan-out, one instance" if scen == "fanout" else f"fan-out through Redis, {scen[7:]} instances"
        ax.set_title(title)
        ax.set_xlabel("deliveries per second")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("delivered rate vs p99 (hollow: saturated step)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
