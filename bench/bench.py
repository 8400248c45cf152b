#!/usr/bin/env python3
"""moat's side-by-side benchmarks (issue #7). Every timed command's exit code
is checked: a failing command is never timed. Prints a markdown table with
median/min/max over N runs and moat's ratio to each peer, plus memory and
density figures. Driven by bench/run.sh (make bench), which prepares the
image, bundles, peers and the bare-QEMU floor."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ARGS = None


def sh(cmd, check=True, capture=False):
    p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        sys.exit(f"benchmark step failed (exit {p.returncode}): {cmd}\n{p.stderr.decode()[-800:]}")
    return p.stdout.decode() if capture else ""


def timed(cmd, expect=None):
    """Times `cmd`; it must exit 0 and, with `expect`, print that line (a
    command that exits 0 without doing its work is never timed)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE if expect else subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"benchmark command failed (exit {p.returncode}), refusing to time it: {cmd}\n{p.stderr.decode()[-800:]}")
    if expect and expect not in p.stdout.decode(errors="replace").splitlines():
        sys.exit(f"benchmark command did not print {expect!r}, refusing to time it: {cmd}\n{p.stdout.decode()[-800:]}")
    return dt


def series(name, cmd, runs, before=None, after=None, expect=None):
    """Times `cmd` `runs` times (after one warm-up); `before`/`after` run untimed around each."""
    return compare([dict(name=name, cmd=cmd, before=before, after=after, expect=expect)], runs)[0]


def compare(specs, runs):
    """Times the commands of `specs` (dicts: name, cmd, before, after,
    expect) side by side: after one warm-up of each, round by round, one run
    of each in turn, so that a machine that slows down or speeds up during
    the benchmark moves every tool alike instead of whichever ran in that
    block. `before`/`after` run untimed around each run."""
    xs = [[] for _ in specs]
    for i in range(runs + 1):
        for k, sp in enumerate(specs):
            if sp.get("before"):
                sh(sp["before"])
            dt = timed(sp["cmd"], sp.get("expect"))
            if sp.get("after"):
                sh(sp["after"])
            if i > 0:
                xs[k].append(dt)
    return [{"name": sp["name"], "median": statistics.median(x), "min": min(x), "max": max(x)} for sp, x in zip(specs, xs)]


def vm_boot(m, env=""):
    """How a VM container of this engine boots now: `template` or `cold`
    (the engine falls back to a cold boot without a word, so the template
    rows check it)."""
    sh(f"{env}{m} run -d --name bboot --network none --isolation=hyperv busybox sleep 100000 </dev/null >/dev/null 2>&1")
    boot = json.loads(sh(f"{m} inspect -- bboot", capture=True))[0]["VM"]["Boot"]
    sh(f"{m} rm -f bboot")
    return boot


def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid):
    """`pid` and its descendants (virtiofsd runs as a parent and a child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in open(f"/proc/{p}/task/{p}/children").read().split()]
        except OSError:
            pass
    return out


def host_kib(pids):
    """What VM processes (QEMU, virtiofsd and its child) really hold on the
    host: their PSS without their shared-memory share, plus every page each
    guest-RAM memfd has allocated, counted once (mapped or not: a clone's copy
    of the template RAM is resident even where the guest has not touched it
    since the restore). moat's `stats` counts the same way (moat_vm::usage)."""
    total, seen = 0, set()
    for pid in pids:
        pss = shmem = 0
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                k, v = line.split()[:2]
                if k == "Pss:":
                    pss = int(v)
                elif k == "Pss_Shmem:":
                    shmem = int(v)
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        total += pss - shmem
        for fd in fds:
            try:
                if "memfd:" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if st.st_ino not in seen:
                        seen.add(st.st_ino)
                        total += st.st_blocks // 2
            except OSError:
                pass
    return total


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pids_matching(needle):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                c = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in c:
                out.append(int(d))
    return out


def fmt_t(s):
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.2f} s"


def row(title, r, ref=None):
    ratio = f"{ref['median'] / r['median']:.2f}x" if ref and ref is not r else ""
    return f"| {title} | {r['name']} | {fmt_t(r['median'])} | {fmt_t(r['min'])} | {fmt_t(r['max'])} | {ratio} |"


def read_head(f):
    """An HTTP response's status line and headers (names lower-cased) from `f`."""
    status, headers = f.readline(), {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            return status, headers
        k, _, v = h.decode().partition(":")
        headers[k.strip().lower()] = v.strip()


def ping_load(sock, clients, per_client):
    """`clients` threads, each on its own keep-alive connection, sending
    `per_client` `GET /_ping`; returns ((p50, p99) latency, requests/s)."""
    import socket
    import threading

    lats, errors = [], []
    lock = threading.Lock()

    def worker():
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        f = s.makefile("rb")
        mine = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: moat\r\n\r\n")
            status, headers = read_head(f)
            body = f.read(int(headers.get("content-length", 0)))
            if not status.startswith(b"HTTP/1.1 200") or body != b"OK":
                errors.append(status)
                break
            mine.append(time.perf_counter() - t0)
        s.close()
        with lock:
            lats.extend(mine)

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    if errors or len(lats) != clients * per_client:
        sys.exit(f"_ping load failed: {errors[:3]}")
    lats.sort()
    return (lats[len(lats) // 2], lats[int(len(lats) * 0.99)]), len(lats) / wall


def api_run(sock, runs):
    """`docker run --rm busybox true`'s own requests (HEAD /_ping, create,
    attach with an upgrade, wait?condition=removed, start, then the wait's
    answer), sent from this process: what the API costs without a client
    program starting. Checks every answer and the exit code."""
    import socket

    def send(method, path, body=b"", upgrade=False):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        head = f"{method} {path} HTTP/1.1\r\nHost: moat\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        if upgrade:
            head += "Connection: Upgrade\r\nUpgrade: tcp\r\n"
        s.sendall(head.encode() + b"\r\n" + body)
        f = s.makefile("rb")
        return (s, f) + read_head(f)

    def chunked(f):
        out = b""
        while True:
            n = int(f.readline().split(b";")[0], 16)
            if n == 0:
                return out
            out += f.read(n)
            f.readline()

    def once():
        ok = lambda st, code: st.startswith(f"HTTP/1.1 {code}".encode()) or sys.exit(f"API run: {st!r}")
        s, f, st, _ = send("HEAD", "/_ping")
        ok(st, 200)
        s.close()
        body = json.dumps({"Image": "busybox", "Cmd": ["true"], "AttachStdout": True, "AttachStderr": True,
                           "HostConfig": {"AutoRemove": True, "NetworkMode": "default"}}).encode()
        s, f, st, h = send("POST", "/v1.45/containers/create", body)
        ok(st, 201)
        cid = json.loads(f.read(int(h["content-length"])))["Id"]
        s.close()
        att, _, st, _ = send("POST", f"/v1.45/containers/{cid}/attach?stream=1&stdout=1&stderr=1", upgrade=True)
        ok(st, 101)
        w, wf, st, _ = send("POST", f"/v1.45/containers/{cid}/wait?condition=removed")
        ok(st, 200)
        s, f, st, _ = send("POST", f"/v1.45/containers/{cid}/start")
        ok(st, 204)
        s.close()
        code = json.loads(chunked(wf))["StatusCode"]
        if code != 0:
            sys.exit(f"API run: exit code {code}")
        w.close()
        att.close()

    xs = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        once()
        if i > 0:
            xs.append(time.perf_counter() - t0)
    return {"name": "the same requests from an in-process client (moat serve)", "median": statistics.median(xs),
            "min": min(xs), "max": max(xs)}


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "10")))
    ap.add_argument("--vm-runs", type=int, default=int(os.environ.get("BENCH_VM_RUNS", "5")))
    ap.add_argument("--moat", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--bundle", required=True, help="OCI bundle with the same rootfs, process `true`")
    ap.add_argument("--image-tar", required=True, help="busybox docker-archive for podman")
    ap.add_argument("--floor-cmd", required=True, help="bare QEMU: same kernel, init powers off")
    ap.add_argument("--floor-idle-cmd", required=True, help="bare QEMU: same kernel, init sleeps")
    ap.add_argument("--big-tar", required=True, help="~100 MB multi-layer docker-archive")
    ap.add_argument("--big-layers", required=True, help="directory with the same layer tars")
    ap.add_argument("--registry", required=True, help="host:port of a local registry holding big:bench")
    ap.add_argument("--scratch", required=True, help="a directory skopeo may copy into")
    ap.add_argument("--cri-sock", default="", help="containerd's socket (CRI plugin; handlers moat, moat-hyperv, runc)")
    ap.add_argument("--cri-bench", default="", help="the cri_bench example binary")
    ap.add_argument("--cri-logs", default="", help="a directory for the pods' CRI logs")
    ap.add_argument("--only", default="")
    a = ARGS = ap.parse_args()
    m = f"{a.moat} --root {a.root}"
    only = set(filter(None, a.only.split(",")))
    want = lambda k: not only or k in only
    out = ["| benchmark | tool | median | min | max | moat ÷ peer |", "|---|---|---:|---:|---:|---:|"]
    notes = []

    if want("run"):
        moat, moat_none, crun, runc, podman = compare([
            dict(name="moat run --rm busybox true", cmd=f"{m} run --rm busybox true"),
            dict(name="moat run --rm --network none busybox true", cmd=f"{m} run --rm --network none busybox true"),
            dict(name="crun run (prepared bundle)", cmd=f"crun run -b {a.bundle} bcrun"),
            dict(name="runc run (prepared bundle)", cmd=f"runc run -b {a.bundle} brunc"),
            dict(name="podman run --rm",
                 cmd="podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file run --rm --network none "
                     "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 localhost/busybox:latest true"),
        ], a.runs)
        out.append(row("process cold run", moat))
        out.append(row("process cold run", moat_none))
        for p in (crun, runc, podman):
            out.append(row("process cold run", p, moat))
        notes.append(f"moat (no switch) / crun = {moat_none['median'] / crun['median']:.2f}x")

    if want("exec"):
        sh(f"{m} run -d --name bexec --network none busybox sleep 100000 </dev/null >/dev/null 2>&1")
        # detached containers keep their stdio: give them /dev/null, not our pipes
        sh(f"crun run -d -b {a.bundle.replace('bundle', 'bundle-sleep')} bcrun-exec </dev/null >/dev/null 2>&1")
        sh(f"runc run -d -b {a.bundle.replace('bundle', 'bundle-sleep')} brunc-exec </dev/null >/dev/null 2>&1")
        moat, crun, runc = compare([
            dict(name="moat exec C true", cmd=f"{m} exec bexec true"),
            dict(name="crun exec", cmd="crun exec bcrun-exec true"),
            dict(name="runc exec", cmd="runc exec brunc-exec true"),
        ], a.runs)
        out.append(row("exec", moat))
        out.append(row("exec", crun, moat))
        out.append(row("exec", runc, moat))
        sh(f"{m} rm -f bexec")
        sh("crun kill bcrun-exec KILL; sleep 0.2; crun delete -f bcrun-exec", check=False)
        sh("runc kill brunc-exec KILL; sleep 0.2; runc delete -f brunc-exec", check=False)

    if want("vm"):
        cold_env = "MOAT_VM_TEMPLATES=off"
        # the first run builds the template (timed on its own), the series then restores it
        t_build = timed(f"{m} vm template prune --all && {m} run --rm --isolation=hyperv busybox true")
        # the rows say how the VMs boot: checked, not assumed
        for env, want_boot in (("", "template"), (f"{cold_env} ", "cold")):
            got = vm_boot(m, env)
            if got != want_boot:
                sys.exit(f"VM containers boot {got!r}, not {want_boot!r}{' (' + env.strip() + ')' if env else ''}: refusing to time them")
        tpl, cold, floor, proc = compare([
            dict(name="moat run --rm --isolation=hyperv busybox true (from a template)",
                 cmd=f"{m} run --rm --isolation=hyperv busybox echo moat-vm-ok", expect="moat-vm-ok"),
            dict(name="moat run --rm --isolation=hyperv busybox true (MOAT_VM_TEMPLATES=off)",
                 cmd=f"{cold_env} {m} run --rm --isolation=hyperv busybox echo moat-vm-ok", expect="moat-vm-ok"),
            # the floor's init prints its marker on the serial console just
            # before it powers off: a guest that panicked is not timed
            dict(name="bare qemu-system-x86_64 (same kernel, init powers off)", cmd=a.floor_cmd, expect="moat-floor-ok"),
            dict(name="moat run --rm busybox true (process)", cmd=f"{m} run --rm busybox true"),
        ], a.vm_runs)
        out.append(row("VM cold run", tpl))
        out.append(row("VM cold run", cold, tpl))
        out.append(row("VM cold run", floor, tpl))
        out.append(row("VM cold run", proc, tpl))
        notes.append(f"VM run from a template = {tpl['median'] / floor['median']:.2f}x the bare-QEMU cold boot (target <= 0.25x), "
                     f"{cold['median'] / tpl['median']:.1f}x faster than a cold boot; first run with the template build: {fmt_t(t_build)}")
        # processes started inside a running container: each exec reads its
        # binary through the guest's page cache (virtio-fs in a VM)
        # every fork+exec must succeed, and the loop must end to print its marker
        loop = "sh -c 'i=0; while [ $i -lt 20 ]; do /bin/true || exit 1; i=$((i+1)); done; echo loop-ok'"
        sh(f"{m} run -d --name bvmx --network none --isolation=hyperv busybox sleep 100000 </dev/null >/dev/null 2>&1")
        sh(f"{m} run -d --name bpx --network none busybox sleep 100000 </dev/null >/dev/null 2>&1")
        vx, px = compare([
            dict(name="moat exec V: 20x fork+exec of /bin/true inside (hyperv)", cmd=f"{m} exec bvmx {loop}", expect="loop-ok"),
            dict(name="moat exec C: 20x fork+exec of /bin/true inside (process)", cmd=f"{m} exec bpx {loop}", expect="loop-ok"),
        ], a.vm_runs)
        out.append(row("exec loop", vx))
        out.append(row("exec loop", px, vx))
        sh(f"{m} rm -f bvmx bpx")

    mem = []
    if want("memory"):
        sh(f"{m} run -d --name bmem --network none busybox sleep 100000")
        cid = sh(f"{m} inspect -- bmem", capture=True)
        cid = json.loads(cid)[0]["Id"]
        time.sleep(1)
        shim = pids_matching(f"shim {cid}")[0]
        mem.append(("process: shim", pss_kib(shim), rss_kib(shim)))
        sh(f"{m} rm -f bmem")
        for label, env in (("hyperv (template)", ""), ("hyperv (cold boot)", "MOAT_VM_TEMPLATES=off ")):
            sh(f"{env}{m} run -d --name bvm --network none --isolation=hyperv busybox sleep 100000")
            v = json.loads(sh(f"{m} inspect -- bvm", capture=True))[0]
            time.sleep(5)
            shim = pids_matching(f"shim {v['Id']}")[0]
            q, f = v["VM"]["QemuPid"], v["VM"]["VirtiofsdPid"]
            fs = tree(f)
            total = pss_kib(shim) + host_kib([q] + fs)
            mem.append((f"{label}: shim", pss_kib(shim), rss_kib(shim)))
            mem.append((f"{label}: qemu (guest RAM memfd counted whole)", host_kib([q]), rss_kib(q)))
            mem.append((f"{label}: qemu (plain PSS: mapped pages only)", pss_kib(q), rss_kib(q)))
            mem.append((f"{label}: virtiofsd ({len(fs)} processes, without the memfd)", host_kib([q] + fs) - host_kib([q]), sum(rss_kib(p) for p in fs)))
            # RSS does not add up across processes that share pages: none for the total
            mem.append((f"{label}: total", total, None))
            if env == "":
                vm_total = total
            sh(f"{m} rm -f bvm")
        fp = subprocess.Popen(a.floor_idle_cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        fq = [p for p in pids_matching("moat-bench-floor-idle") if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"qemu-system")]
        floor = sum(pss_kib(p) for p in fq)
        mem.append(("bare QEMU floor (idle guest)", floor, sum(rss_kib(p) for p in fq)))
        for p in fq:
            os.kill(p, 9)
        fp.kill()
        fp.wait()
        notes.append(f"per-VM overhead beyond the bare-QEMU floor: {(vm_total - floor) / 1024:.1f} MiB PSS")

    dens = []
    if want("density"):
        n = int(os.environ.get("BENCH_DENSITY", "100"))
        t0 = time.perf_counter()
        sh(f"seq {n} | xargs -P {n} -I{{}} {m} run -d --network none --name d{{}} busybox sleep 100000 > /dev/null")
        t_start = time.perf_counter() - t0
        time.sleep(1)
        # PSS of everything the containers cost: shims and their processes
        used = sum(pss_kib(p) for p in pids_matching(f"--root {a.root} shim") + pids_matching("sleep 100000"))
        t0 = time.perf_counter()
        sh(f"{m} ps -aq --no-trunc | xargs -P 16 -n 10 {m} rm -f > /dev/null")
        t_stop = time.perf_counter() - t0
        dens.append((f"{n} process containers (sleep)", t_start, t_stop, used / 1024))
        for k in [int(x) for x in os.environ.get("BENCH_VM_DENSITY", "8,32").split(",")]:
            t0 = time.perf_counter()
            sh(f"seq {k} | xargs -P {k} -I{{}} {m} run -d --network none --isolation=hyperv --name v{{}} busybox sleep 100000 > /dev/null")
            t_start = time.perf_counter() - t0
            time.sleep(5)
            vms = [p for p in pids_matching("-name moat-") if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"/usr/bin/qemu")]
            if len(vms) != k:
                sys.exit(f"expected {k} VMs, found {len(vms)}")
            fsd = [c for p in pids_matching(f"--shared-dir={a.root}") for c in tree(p)]
            used = sum(pss_kib(p) for p in pids_matching(f"--root {a.root} shim"))
            used += host_kib(vms + sorted(set(fsd)))
            t0 = time.perf_counter()
            sh(f"{m} ps -aq --no-trunc | xargs -P 8 -n 1 {m} rm -f > /dev/null")
            t_stop = time.perf_counter() - t0
            dens.append((f"{k} idle VM containers (from a template, started together)", t_start, t_stop, used / 1024))
            notes.append(f"{k} idle VMs: started in {t_start:.1f} s (target for 32: < 15 s), {used / 1024 / k:.0f} MiB host memory each (target <= 60 MiB)")

    pods = []
    if want("pod"):
        # a hyperv pod of 4 idle containers against 4 separate hyperv
        # containers: each alone, then side by side (PSS splits the pages of
        # QEMU's, virtiofsd's and moat's binaries among the processes mapping
        # them; alone, a pod's one QEMU pays all of them and each of four VMs
        # a quarter, so only the side-by-side figures compare like with like)
        def group_kib(ids):
            """Host memory of the VMs, virtiofsd and shims of these containers."""
            vms = [p for p in pids_matching("-name moat-") if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"/usr/bin/qemu")
                   and any(f"-name moat-{i[:12]}" in open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode() for i in ids)]
            fsd = sorted({c for i in ids for p in pids_matching(f"--shared-dir={a.root}/containers/{i}") for c in tree(p)})
            used = sum(pss_kib(p) for i in ids for p in pids_matching(f"--root {a.root} shim {i}"))
            return len(vms), used + host_kib(vms + fsd)
        def ids_of(flt):
            return subprocess.run(f"{m} ps -aq --no-trunc --filter {flt}", shell=True, capture_output=True, text=True, check=True).stdout.split()
        def start_pod():
            sh(f"{m} pod create --name bpod --isolation hyperv --network none > /dev/null")
            for i in range(4):
                sh(f"{m} run -d --pod bpod --name bp{i} busybox sleep 100000 </dev/null >/dev/null 2>&1")
            return ids_of("pod=bpod")
        def start_four():
            for i in range(4):
                sh(f"{m} run -d --isolation hyperv --network none --name bs{i} busybox sleep 100000 </dev/null >/dev/null 2>&1")
            return ids_of("name=^bs")
        pod_ids = start_pod()
        time.sleep(5)
        nq, pod_alone = group_kib(pod_ids)
        if nq != 1 or len(pod_ids) != 5:
            sys.exit(f"a pod of 4 runs {nq} VMs and {len(pod_ids)} containers, not 1 and 5 (with the infra)")
        sh(f"{m} pod rm -f bpod > /dev/null")
        sep_ids = start_four()
        time.sleep(5)
        nq, sep_alone = group_kib(sep_ids)
        if nq != 4:
            sys.exit(f"4 separate VM containers run {nq} VMs")
        pod_ids = start_pod()
        time.sleep(5)
        (nq, pod_kib), (nq4, sep_kib) = group_kib(pod_ids), group_kib(sep_ids)
        if (nq, nq4) != (1, 4):
            sys.exit(f"side by side: {nq} and {nq4} VMs, not 1 and 4")
        sh(f"{m} pod rm -f bpod > /dev/null && {m} rm -f bs0 bs1 bs2 bs3 > /dev/null")
        pods.append(("hyperv pod: 4 idle containers (one VM), beside the four VMs", pod_kib))
        pods.append(("4 idle hyperv containers (four VMs), beside the pod", sep_kib))
        pods.append(("one idle hyperv container (a quarter of the above)", sep_kib / 4))
        pods.append(("hyperv pod of 4, alone", pod_alone))
        pods.append(("4 idle hyperv containers, alone (a quarter: one VM container)", sep_alone))
        notes.append(f"host memory of a hyperv pod of 4 idle containers = {pod_kib / (sep_kib / 4):.2f}x one VM container side by side "
                     f"(target <= 1.3x), {pod_kib / sep_kib:.2f}x four separate VM containers; measured alone "
                     f"(the pod's QEMU paying all its binary's pages) {pod_alone / (sep_alone / 4):.2f}x")
        # a second container started in a running pod: no VM to boot
        sh(f"{m} pod create --name bpod2 --isolation hyperv --network none > /dev/null && {m} pod start bpod2 > /dev/null")
        inpod, proc = compare([
            dict(name="moat run --rm --pod P busybox true (a running hyperv pod)", cmd=f"{m} run --rm --pod bpod2 busybox echo moat-pod-ok", expect="moat-pod-ok"),
            dict(name="moat run --rm --network none busybox true (process)", cmd=f"{m} run --rm --network none busybox true"),
        ], a.runs)
        sh(f"{m} pod rm -f bpod2 > /dev/null")
        out.append(row("start in a pod", inpod))
        out.append(row("start in a pod", proc, inpod))
        notes.append(f"a container started in a running hyperv pod = {inpod['median'] / proc['median']:.2f}x moat run of a process container (target <= 3x)")

    if want("load"):
        # each timed without its clean-up (moat's rmi, tar's rm -rf run untimed)
        moat, tarx = compare([
            dict(name="moat image load (~100 MB, 3 layers)", cmd=f"{m} load -q -i {a.big_tar}",
                 after=f"{m} rmi -f big:bench"),
            dict(name="tar -x of the same layers",
                 cmd=f"for l in {a.big_layers}/*.tar; do tar -xf $l -C /tmp/moat-bench-x || exit 1; done",
                 before="rm -rf /tmp/moat-bench-x && mkdir -p /tmp/moat-bench-x"),
        ], max(3, a.runs // 3))
        sh("rm -rf /tmp/moat-bench-x")
        out.append(row("image load", moat))
        out.append(row("image load", tarx, moat))
        notes.append(f"image load throughput: moat = {tarx['median'] / moat['median']:.2f}x tar -x")

    if want("pull"):
        ref = f"{a.registry}/big:bench"
        pm = "podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file"
        n = max(3, a.runs // 3)
        moat, skopeo, podman = compare([
            dict(name="moat pull (~100 MB, 3 gzip layers, local registry)", cmd=f"{m} pull -q {ref}",
                 after=f"{m} rmi -f {ref} && {m} image prune -f"),
            dict(name="skopeo copy to a local dir (no unpack)",
                 cmd=f"skopeo copy -q --src-tls-verify=false docker://{ref} dir:{a.scratch}",
                 before=f"rm -rf {a.scratch}", after=f"rm -rf {a.scratch}"),
            dict(name="podman pull", cmd=f"{pm} pull -q --tls-verify=false {ref}", after=f"{pm} rmi -f {ref}"),
        ], n)
        out.append(row("image pull", moat))
        for p in (skopeo, podman):
            out.append(row("image pull", p, moat))
        notes.append(f"pull: moat = {moat['median'] / skopeo['median']:.2f}x skopeo copy, {moat['median'] / podman['median']:.2f}x podman pull")

    if want("api"):
        sock = os.path.join(a.scratch + "-api", "docker.sock")
        os.makedirs(os.path.dirname(sock), exist_ok=True)
        srv = subprocess.Popen([a.moat, "--root", a.root, "serve", "--socket", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            dk = f"DOCKER_HOST=unix://{sock} DOCKER_CONFIG={os.path.dirname(sock)} docker"
            moat = series("moat run --rm busybox true", f"{m} run --rm busybox true", a.runs)
            cpu0 = os.times()
            api = series("docker run --rm busybox true (moat serve)", f"{dk} run --rm busybox true", a.runs)
            cpu1 = os.times()
            # (these two are timed in blocks: the CPU the docker CLI uses is
            # measured over its own runs; the VM pair below alternates)
            # CPU of the docker CLI processes (children of this one): on 2 cores it competes with the start
            dk_cpu = (cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system) / (a.runs + 1)
            raw = api_run(sock, a.runs)
            # the docker CLI's own cost: a Go binary starting, reading its
            # config and doing two requests (`_ping`, `version`)
            floor = series("docker version (moat serve): the CLI's own floor", f"{dk} version", a.runs)
            out.append(row("API run", api))
            out.append(row("API run", moat, api))
            out.append(row("API run", floor, api))
            out.append(row("API run", raw, api))
            notes.append(f"docker run through moat serve = {api['median'] / moat['median']:.2f}x moat run; "
                         f"the docker CLI alone (`docker version`) takes {fmt_t(floor['median'])} of it, and "
                         f"`docker run` uses {dk_cpu * 1000:.1f} ms of CPU itself; docker run's requests from an "
                         f"in-process client = {raw['median'] / moat['median']:.2f}x moat run")
            # the same pair for VM isolation, where the engine's own work dominates
            vruns = max(3, a.runs // 2)
            vmoat, vapi = compare([
                dict(name="moat run --rm --isolation=hyperv busybox true", cmd=f"{m} run --rm --isolation=hyperv busybox true"),
                dict(name="docker run --rm --isolation=hyperv busybox true (moat serve)",
                     cmd=f"{dk} run --rm --isolation=hyperv busybox true"),
            ], vruns)
            out.append(row("API run (VM)", vapi))
            out.append(row("API run (VM)", vmoat, vapi))
            notes.append(f"docker run --isolation=hyperv through moat serve = {vapi['median'] / vmoat['median']:.2f}x "
                         f"moat run --isolation=hyperv")
            lat, rps = ping_load(sock, 50, 200)
            notes.append(f"_ping, 50 concurrent keep-alive clients x 200: {rps:.0f} req/s, p50 {lat[0] * 1000:.2f} ms, p99 {lat[1] * 1000:.2f} ms")
        finally:
            srv.terminate()
            srv.wait()

    if want("cri") and a.cri_sock:
        # the kubelet's start of a pod through containerd's CRI:
        # RunPodSandbox + CreateContainer + StartContainer to the first
        # output in the CRI log, round by round (cri_bench alternates them)
        got = subprocess.run([a.cri_bench, a.cri_sock, "docker.io/library/busybox:latest", a.cri_logs,
                              str(a.vm_runs), "moat", "moat-hyperv", "runc"], capture_output=True, text=True)
        if got.returncode != 0:
            log = open(os.path.join(os.path.dirname(a.cri_sock), "containerd.log"), errors="replace").read()
            sys.exit(f"cri_bench failed: {got.stderr[-800:]}\ncontainerd's log:\n" + "\n".join(log.splitlines()[-30:]))
        res = {h: {"name": f"containerd CRI, handler {h}", "median": statistics.median(x), "min": min(x), "max": max(x)}
               for h, x in json.loads(got.stdout).items()}
        out.append(row("CRI pod start", res["moat"]))
        out.append(row("CRI pod start", res["runc"], res["moat"]))
        out.append(row("CRI pod start", res["moat-hyperv"], res["moat"]))
        notes.append(f"CRI pod start: moat (process) / runc = {res['moat']['median'] / res['runc']['median']:.2f}x, "
                     f"moat-hyperv / runc = {res['moat-hyperv']['median'] / res['runc']['median']:.2f}x")

    if want("slow"):
        # the API server while 200 slow clients hold connections: 150
        # slowloris heads (a header line every second, never ended) and 50
        # hijacked attach streams nobody reads; `_ping` from 50 keep-alive
        # clients, before and while they hold (issue #35: p99 <= 100 ms)
        import socket
        import tempfile as _tf
        d = _tf.mkdtemp(prefix="moat-bench-slow.")
        sock = os.path.join(d, "api.sock")
        srv = subprocess.Popen([a.moat, "--root", a.root, "serve", "--socket", sock],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        held = []
        try:
            for _ in range(200):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            sh(f"{m} run -d --name bslow --network none busybox sleep 100000 </dev/null >/dev/null 2>&1")
            base, base_rps = ping_load(sock, 50, 100)
            for i in range(150):
                c = socket.socket(socket.AF_UNIX)
                c.connect(sock)
                c.sendall(b"GET /_ping HTTP/1.1\r\nHost: moat\r\n")
                held.append(c)
            for i in range(50):
                c = socket.socket(socket.AF_UNIX)
                c.connect(sock)
                c.sendall(b"POST /containers/bslow/attach?stream=1&stdout=1 HTTP/1.1\r\nHost: moat\r\n"
                          b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
                held.append(c)
            time.sleep(0.5)
            for c in held[:150]:
                c.sendall(b"X-Slow: 1\r\n")
            loaded, loaded_rps = ping_load(sock, 50, 100)
            notes.append(f"_ping, 50 keep-alive clients x 100, alone: p50 {base[0] * 1000:.2f} ms, p99 {base[1] * 1000:.2f} ms "
                         f"({base_rps:.0f} req/s); while 150 slowloris heads and 50 unread hijacked attach streams are held: "
                         f"p50 {loaded[0] * 1000:.2f} ms, p99 {loaded[1] * 1000:.2f} ms ({loaded_rps:.0f} req/s)")
        finally:
            for c in held:
                c.close()
            sh(f"{m} rm -f bslow", check=False)
            srv.terminate()
            srv.wait()
            import shutil as _sh
            _sh.rmtree(d, ignore_errors=True)

    if want("build"):
        # one small Dockerfile (COPY, RUN, ENV, CMD) built from scratch by
        # each builder (no cache), then again with every step cached; RUN
        # without a network for all of them
        import shutil
        import tempfile
        w = tempfile.mkdtemp(prefix="moat-bench-build.")
        bh = f"buildah --root {w}/bh/root --runroot {w}/bh/run --storage-driver vfs"
        # podman with a store of its own (overlay, its default), so nothing of the machine's is touched
        pm = f"podman --root {w}/pm/root --runroot {w}/pm/run --runtime runc --cgroup-manager=cgroupfs --events-backend=file"
        try:
            ctx = os.path.join(w, "ctx")
            os.makedirs(ctx)
            with open(os.path.join(ctx, "data"), "wb") as f:
                f.write(os.urandom(1 << 20))
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write("ARG BASE=busybox\nFROM $BASE\nCOPY data /data\nRUN echo built > /built && md5sum /data > /sum\n"
                        "ENV A=1\nCMD [\"cat\", \"/built\"]\n")
            sh(f"{bh} pull -q docker-archive:{a.image_tar}")
            sh(f"{pm} load -q -i {a.image_tar}")
            peer = "--build-arg BASE=localhost/busybox:latest --network none"
            rows = compare([
                dict(name="moat build --no-cache (process)", cmd=f"{m} build -q --no-cache --network none {ctx}"),
                dict(name="moat build --no-cache --isolation=hyperv",
                     cmd=f"{m} build -q --no-cache --network none --isolation=hyperv {ctx}"),
                dict(name="buildah bud --no-cache (runc)",
                     cmd=f"{bh} bud -q --no-cache --isolation oci {peer} {ctx}"),
                dict(name="podman build --no-cache (runc)", cmd=f"{pm} build -q --no-cache {peer} {ctx}"),
            ], a.vm_runs)
            out.append(row("build, no cache", rows[0]))
            for r in rows[1:]:
                out.append(row("build, no cache", r, rows[0]))
            cached = compare([
                dict(name="moat build (all cached)", cmd=f"{m} build -q --network none {ctx}"),
                dict(name="buildah bud --layers (all cached)",
                     cmd=f"{bh} bud -q --layers --isolation oci {peer} {ctx}"),
                dict(name="podman build (all cached)", cmd=f"{pm} build -q --layers {peer} {ctx}"),
            ], a.runs)
            out.append(row("build, cached", cached[0]))
            for r in cached[1:]:
                out.append(row("build, cached", r, cached[0]))
            notes.append(f"build (no cache): moat = {rows[0]['median'] / rows[2]['median']:.2f}x buildah, "
                         f"{rows[0]['median'] / rows[3]['median']:.2f}x podman; hyperv = {rows[1]['median'] / rows[0]['median']:.2f}x process")
        finally:
            sh(f"{m} builder prune -f", check=False)
            sh(f"{pm} rmi -a -f", check=False)
            sh(f"{bh} rmi -a -f", check=False)
            shutil.rmtree(w, ignore_errors=True)

    print("\n".join(out))
    if mem:
        print("\n| memory of one idle container | PSS | RSS |\n|---|---:|---:|")
        for name, pss, rss in mem:
            print(f"| {name} | {pss / 1024:.1f} MiB | {'—' if rss is None else f'{rss / 1024:.1f} MiB'} |")
    if pods:
        print("\n| pods (idle, host memory: shims, QEMU with its guest RAM, virtiofsd) | PSS |\n|---|---:|")
        for name, kib in pods:
            print(f"| {name} | {kib / 1024:.1f} MiB |")
    if dens:
        print("\n| density | start all (wall) | stop+rm all (wall) | host memory (PSS, all processes) |\n|---|---:|---:|---:|")
        for name, ts, tp, mb in dens:
            print(f"| {name} | {fmt_t(ts)} | {fmt_t(tp)} | {mb:.0f} MiB |")
    if notes:
        print()
        for n in notes:
            print(f"- {n}")


if __name__ == "__main__":
    main()
