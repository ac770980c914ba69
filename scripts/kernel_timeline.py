#!/usr/bin/env python3
"""Per-kernel cost of a replayed decode step, from bench/kernel_trace.cpp's CSV.

Under programmatic dependent launch a kernel starts before its predecessor ends and waits inside,
so its own duration (end - start) says little. What it adds to the step is how much later the
step's last finished kernel ends once it has run: taking the graph's kernels in order of their
end times, kernel k adds end[k] - end[k - 1]. Those increments sum to the step's time.

Usage: scripts/kernel_timeline.py trace.csv [--skip N] [--by-grid] [--layers]
  The graph with the most replays is the decode step; its first N replays (default 2) are
  skipped, and each kernel family's increment is the median over the others.
  --by-grid keys families by grid too (a GEMV's shapes apart).
  --layers also prints one replay's kernels in order with their start, end and increment.
"""
import argparse
import csv
import re
import statistics
from collections import defaultdict


def family(name):
    """The kernel's name without namespaces, parameters or template arguments."""
    base = name.replace("(anonymous namespace)::", "").split("(")[0]
    base = re.sub(r"<.*", "", base)
    base = base.replace("void ", "").strip()
    return base.split("::")[-1]


def replays(rows):
    """Splits one graph's kernels (by start time) into replays: a node id seen again starts one."""
    out, current, seen = [], [], set()
    for row in rows:
        if row["node"] in seen:
            out.append(current)
            current, seen = [], set()
        current.append(row)
        seen.add(row["node"])
    if current:
        out.append(current)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--by-grid", action="store_true")
    parser.add_argument("--layers", action="store_true")
    args = parser.parse_args()

    graphs = defaultdict(list)
    with open(args.trace) as f:
        for row in csv.DictReader(f):
            if row["graph_id"] == "0":
                continue
            graphs[row["graph_id"]].append({
                "start": int(row["start_ns"]), "end": int(row["end_ns"]),
                "node": row["graph_node_id"], "grid": row["grid"], "name": row["name"]})
    if not graphs:
        raise SystemExit("no graph-launched kernels in the trace")
    by_graph = {g: replays(sorted(rows, key=lambda r: r["start"])) for g, rows in graphs.items()}
    graph = max(by_graph, key=lambda g: len(by_graph[g]))
    steps = by_graph[graph][args.skip:] or by_graph[graph]
    print(f"graph {graph}: {len(by_graph[graph])} replays, {len(steps[0])} kernels each, "
          f"using {len(steps)}")

    step_us, increments, durations, counts = [], defaultdict(list), defaultdict(list), {}
    for step in steps:
        ordered = sorted(step, key=lambda r: r["end"])
        first_start = min(r["start"] for r in step)
        step_us.append((ordered[-1]["end"] - first_start) / 1e3)
        per_family, per_family_duration, per_family_count = defaultdict(float), defaultdict(float), defaultdict(int)
        previous = first_start
        for r in ordered:
            key = family(r["name"]) + (f" {r['grid']}" if args.by_grid else "")
            per_family[key] += (r["end"] - previous) / 1e3
            per_family_duration[key] += (r["end"] - r["start"]) / 1e3
            per_family_count[key] += 1
            previous = r["end"]
        for key in per_family:
            increments[key].append(per_family[key])
            durations[key].append(per_family_duration[key])
            counts[key] = per_family_count[key]

    median_step = statistics.median(step_us)
    print(f"step: median {median_step:.1f} us ({1e6 / median_step:.1f} steps/s), "
          f"min {min(step_us):.1f}, max {max(step_us):.1f}")
    print(f"{'kernel family':44} {'per step':>8} {'adds us':>9} {'share':>6} {'us each':>8} "
          f"{'own us':>8}")
    for key in sorted(increments, key=lambda k: -statistics.median(increments[k])):
        added = statistics.median(increments[key])
        own = statistics.median(durations[key])
        print(f"{key[:44]:44} {counts[key]:8d} {added:9.1f} {100 * added / median_step:5.1f}% "
              f"{added / counts[key]:8.2f} {own / counts[key]:8.2f}")

    if args.layers:
        step = sorted(steps[-1], key=lambda r: r["end"])
        origin = min(r["start"] for r in step)
        previous = origin
        print(f"\n{'start':>9} {'end':>9} {'adds':>7}  kernel (grid)")
        for r in step:
            print(f"{(r['start'] - origin) / 1e3:9.2f} {(r['end'] - origin) / 1e3:9.2f} "
                  f"{(r['end'] - previous) / 1e3:7.2f}  {family(r['name'])} ({r['grid']})")
            previous = r["end"]


if __name__ == "__main__":
    main()
