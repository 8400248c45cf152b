#!/usr/bin/env python3
"""moat's side-by-side benchmarks: run each command N times, reject any run
that fails (non-zero exit), print median/min/max and moat's ratio to each
peer. Usage: bench.py [--runs N] [--only NAME,...] (see run.sh)."""

import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(cmd, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"benchmark command failed (exit {p.returncode}), refusing to time it: {cmd}\n{p.stderr.decode()[-500:]}")
    return dt


def series(name, cmd, runs, setup=None, env=None):
    if setup:
        subprocess.run(setup, shell=True, check=True)
    timed(cmd, env)  # warm-up (page cache, initramfs cache)
    xs = [timed(cmd, env) for _ in range(runs)]
    return {"name": name, "cmd": cmd, "median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": runs}


def fmt(s):
    return f"{s * 1000:8.1f} ms" if s < 10 else f"{s:8.2f} s "


def table(groups):
    print(f"| benchmark | tool | median | min | max | moat ratio |")
    print(f"|---|---|---:|---:|---:|---:|")
    for title, rows in groups:
        moat = next((r for r in rows if r["name"].startswith("moat")), None)
        for r in rows:
            ratio = ""
            if moat and r is not moat:
                ratio = f"{moat['median'] / r['median']:.2f}x"
            print(f"| {title} | {r['name']} | {fmt(r['median'])} | {fmt(r['min'])} | {fmt(r['max'])} | {ratio} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "10")))
    ap.add_argument("--moat", default=os.environ.get("MOAT", "moat"))
    ap.add_argument("--root", required=True)
    ap.add_argument("--floor-cmd", required=True, help="bare QEMU boot to an init that powers off")
    a = ap.parse_args()
    m = f"{a.moat} --root {a.root}"
    groups = []
    groups.append(("process cold run", [series("moat run --rm busybox true", f"{m} run --rm busybox true", a.runs)]))
    groups.append((
        "VM cold run",
        [
            series("moat run --rm --isolation=hyperv busybox true", f"{m} run --rm --isolation=hyperv busybox true", a.runs),
            series("bare qemu-system-x86_64 (same kernel, init powers off)", a.floor_cmd, a.runs),
        ],
    ))
    table(groups)


if __name__ == "__main__":
    main()
