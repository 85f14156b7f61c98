#!/usr/bin/env python3
"""The bridge's cost at low and steady rates: WebSocket (spool on) -> NATS JetStream.

For each rate it starts `fondo-bridge simulate stream` and `fondo-bridge run` as two processes,
waits for a warm-up, then reads over a window:

- CPU of the bridge (utime+stime from /proc/PID/stat) and per thread, with each thread's
  voluntary context switches (each is one sleep, so one wake-up after it);
- events acknowledged (the `acked` counter) and the receive-to-ack histogram (p50/p99 as the
  upper bound of their bucket);
- RSS at the end of the window;
- then, separately, `strace -f -c` over a shorter window for system calls per event.

Rate 0 means heartbeats only (`--count 0 --heartbeat-ms 5000`). Needs NATS with JetStream on
127.0.0.1:4222 (or $FONDO_BRIDGE_TEST_NATS). Usage:

    scripts/lowrate.py --bin /work/target-h/release/fondo-bridge --rates 0,100,1000,10000
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            name = head.split("(", 1)[1]
            parts = tail.split()
            cpu = (int(parts[11]) + int(parts[12])) / TICK
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = f.read()
            vol = int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", st).group(1))
            nvol = int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", st).group(1))
            out[tid] = (name, cpu, vol, nvol)
        except (FileNotFoundError, ProcessLookupError, AttributeError):
            pass
    return out


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024


def scrape(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    acked = 0.0
    buckets = {}
    for line in text.splitlines():
        if line.startswith("fondo_bridge_acked_total") or line.startswith("acked_total"):
            acked += float(line.split()[-1])
        m = re.match(r'(?:fondo_bridge_)?receive_to_ack_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets[le] = buckets.get(le, 0) + float(m.group(2))
    return acked, buckets


def quantile(b0, b1, q):
    les = sorted(b1)
    total = b1[les[-1]] - b0.get(les[-1], 0)
    if total <= 0:
        return None
    for le in les:
        if b1[le] - b0.get(le, 0) >= q * total:
            return le
    return None


def nats_delete_stream(url, name):
    host, port = url.split("//", 1)[-1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.recv(4096)
            s.sendall(
                b'CONNECT {"verbose":false}\r\n'
                + f"PUB $JS.API.STREAM.DELETE.{name} 0\r\n\r\nPING\r\n".encode()
            )
            s.recv(4096)
    except OSError:
        pass


def wait_ready(admin, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


def run_rate(args, rate):
    tmp = tempfile.mkdtemp(prefix="lowrate-")
    sim_port, admin = free_port(), free_port()
    cid = "49ad7378-121c-4a53-9894-dfd14a7b4877"
    name = f"lowrate_{os.getpid()}_{rate}"
    nats = os.environ.get("FONDO_BRIDGE_TEST_NATS", "nats://127.0.0.1:4222")
    cfg = f"""
sources:
  websocket:
    url: ws://127.0.0.1:{sim_port}
    client_ids: [{cid}]
    token: sim-token
sinks:
  nats:
    type: nats
    url: "{nats}"
    streams: [{{ name: {name.upper()}, subjects: ["{name}.>"], storage: memory, max_age_ms: 5000, duplicate_window_ms: 5000 }}]
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: nats, topic: "{name}.{{entity}}" }}] }}
dead_letter: {{ fallback_file: {tmp}/dead-letter.jsonl }}
spool: {{ dir: {tmp}/spool }}
admin: {{ listen: 127.0.0.1:{admin} }}
telemetry: {{ log_level: warn }}
{args.extra}
"""
    path = os.path.join(tmp, "bridge.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    sim_args = [args.bin, "simulate", "stream", "--listen", f"127.0.0.1:{sim_port}",
                "--payload-bytes", "2048", "--client-id", cid, "--heartbeat-ms", "5000"]
    sim_args += ["--count", "0"] if rate == 0 else ["--rate", str(rate)]
    log = open(os.path.join(tmp, "logs.txt"), "w")
    sim = subprocess.Popen(sim_args, stdout=log, stderr=log)
    time.sleep(0.5)
    env = dict(os.environ)
    env.update(args.env)
    bridge = subprocess.Popen([args.bin, "run", "--config", path], stdout=log, stderr=log, env=env)
    pid = bridge.pid
    try:
        if not wait_ready(admin, time.time() + 30):
            raise RuntimeError(f"bridge not ready; see {tmp}/logs.txt")
        time.sleep(args.warm)
        a0, h0 = scrape(admin)
        c0, t0, w0 = proc_cpu(pid), threads(pid), time.time()
        time.sleep(args.window)
        a1, h1 = scrape(admin)
        c1, t1, w1 = proc_cpu(pid), threads(pid), time.time()
        rss = rss_mib(pid)
        wall = w1 - w0
        events = a1 - a0
        res = {
            "rate": rate,
            "eps": events / wall,
            "cpu_pct": 100 * (c1 - c0) / wall,
            "cpu_us_per_event": 1e6 * (c1 - c0) / events if events else None,
            "rss_mib": rss,
            "p50_ms": (lambda v: v and v * 1e3)(quantile(h0, h1, 0.5)),
            "p99_ms": (lambda v: v and v * 1e3)(quantile(h0, h1, 0.99)),
        }
        per = {}
        for tid, (nm, cpu, vol, nvol) in t1.items():
            b = t0.get(tid, (nm, 0.0, 0, 0))
            key = re.sub(r"\d+$", "#", nm)
            d = per.setdefault(key, [0, 0.0, 0, 0])
            d[0] += 1
            d[1] += cpu - b[1]
            d[2] += vol - b[2]
            d[3] += nvol - b[3]
        res["threads"] = {
            k: {"n": v[0], "cpu_pct": round(100 * v[1] / wall, 2),
                "wakeups_per_s": round(v[2] / wall, 1),
                "wakeups_per_event": round(v[2] / events, 2) if events else None,
                "involuntary_per_s": round(v[3] / wall, 1)}
            for k, v in sorted(per.items())
        }
        res["wakeups_per_s"] = sum(v["wakeups_per_s"] for v in res["threads"].values())
        res["wakeups_per_event"] = res["wakeups_per_s"] / (events / wall) if events else None
        if args.strace > 0:
            s0, _ = scrape(admin)
            out = os.path.join(tmp, "strace.txt")
            st = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(args.strace)
            st.send_signal(signal.SIGINT)
            st.wait()
            s1, _ = scrape(admin)
            ev = s1 - s0
            calls = {}
            with open(out) as f:
                for line in f:
                    p = line.split()
                    if len(p) >= 5 and p[0][0].isdigit() and p[-1] not in ("total",):
                        try:
                            n = int(p[3])
                        except ValueError:
                            continue
                        calls[p[-1]] = n
            dur = args.strace
            res["strace_events"] = ev
            res["syscalls_per_s"] = {k: round(v / dur, 1) for k, v in
                                     sorted(calls.items(), key=lambda kv: -kv[1])[:12]}
            if ev:
                res["syscalls_per_event"] = {k: round(v / ev, 3) for k, v in
                                             sorted(calls.items(), key=lambda kv: -kv[1])[:12]}
                res["syscalls_total_per_event"] = round(sum(calls.values()) / ev, 2)
        return res
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(timeout=15)
        except subprocess.TimeoutExpired:
            bridge.kill()
        sim.kill()
        sim.wait()
        nats_delete_stream(nats, name.upper())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="/work/target-h/release/fondo-bridge")
    ap.add_argument("--rates", default="0,100,1000,10000")
    ap.add_argument("--warm", type=float, default=8)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--strace", type=float, default=8)
    ap.add_argument("--extra", default="", help="YAML appended to the bridge's config")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the bridge")
    args = ap.parse_args()
    args.env = dict(e.split("=", 1) for e in args.env)
    for r in args.rates.split(","):
        res = run_rate(args, int(r))
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.exit(main())
