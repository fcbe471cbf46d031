#!/usr/bin/env python3
"""Harness of scripts/bench: starts backends, DNS, the proxies, drives load, prints tables.

Run it through scripts/bench, which installs the Debian packages and builds the binaries
first. Everything listens on loopback (127.0.0.x, 127.0.1.x); every child process is killed
when the harness ends, however it ends (signals, exceptions, and PR_SET_PDEATHSIG if the
harness itself is killed); every loop is bounded in count and time.

Layout on loopback (one backend port for all backends, as A records work in a VPC):

    127.0.0.2      hello                 127.0.0.11-13  name x3     (DNS: name.internal)
    127.0.0.3      HAProxy               127.0.0.21-23  nginx x3    (DNS: static.internal)
    127.0.0.4      dnsmasq (free port)   127.0.1.1-...  more nginx  (DNS: epN.internal, --endpoints)
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO_ADDR = "127.0.0.2"
HAPROXY_ADDR = "127.0.0.3"
DNS_ADDR = "127.0.0.4"
NAME_ADDRS = [f"127.0.0.{i}" for i in (11, 12, 13)]
NGINX_ADDRS = [f"127.0.0.{i}" for i in (21, 22, 23)]
ACCEPT_JSON = "application/json"
# The answer nginx gives, the same shape as name's JSON answer.
STATIC_NAME = "Olivia"
# A request at least this slow is an outlier: counted in the tables, and bench.lua keeps the
# moment it started (CLOCK_MONOTONIC) and its latency, up to 1,000 per wrk thread.
SLOW_US = 10_000


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A failure that ends the run with one line."""


# --- child processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL if the harness dies without cleaning up.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Children:
    """Every process the harness starts; all are stopped by `stop_all`."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], cpu: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, preexec_fn=_die_with_parent)
        out.close()
        self.procs.append((name, proc))
        # For scripts/bench to clean up after a harness that was killed outright: a child that
        # changes its credentials (dnsmasq) loses PR_SET_PDEATHSIG.
        with open(self.logs / "children.pids", "a") as pids:
            pids.write(f"{proc.pid} {Path(argv[0]).name}\n")
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = []

    def check_alive(self, proc: subprocess.Popen, name: str) -> None:
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")


# --- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads, live or gone), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the process's live threads: how often they
    went to sleep with nothing to do, and how often another task took their CPU."""
    slept = preempted = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended
            continue
        counts = dict(line.split(":") for line in lines if "ctxt_switches" in line)
        slept += int(counts["voluntary_ctxt_switches"])
        preempted += int(counts["nonvoluntary_ctxt_switches"])
    return slept, preempted


def machine_idle_seconds() -> float:
    """Idle time of all CPUs together (idle + iowait from /proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / CLK_TCK


def reaped_children_cpu_seconds() -> float:
    """utime + stime of this harness's children that have been waited for (wrk, once done)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def thread_names(pid: int) -> list[str]:
    names = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return names


def established_to_port(pid: int, port: int) -> tuple[int, int]:
    """ESTABLISHED TCP connections of `pid` whose remote port is `port`, and how many distinct
    remote addresses they go to."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0, 0
    count = 0
    remotes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "01" and cols[9] in inodes:
                remote, remote_port = cols[2].rsplit(":", 1)
                if int(remote_port, 16) == port:
                    count += 1
                    remotes.add(remote)
    return count, len(remotes)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- network helpers --------------------------------------------------------------------------


def free_port(addrs: list[str], udp: bool = False) -> int:
    """A port free for TCP (and UDP) on every address in `addrs`; bounded tries."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        socks = []
        try:
            for addr in addrs:
                kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((addr, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError("no free port found on the loopback addresses")


def get(addr: str, port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": ACCEPT_JSON})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for_200(addr: str, port: int, deadline_s: float, proc: subprocess.Popen | None = None,
                 interval: float = 0.005) -> float:
    """Polls GET / until 200; returns the seconds waited. Bounded by `deadline_s`."""
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < deadline_s:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process for {addr}:{port} exited with {proc.returncode}")
        try:
            status, body = get(addr, port, timeout=1.0)
            if status == 200:
                return time.monotonic() - start
            last = f"status {status}: {body[:200]!r}"
        except OSError as err:
            last = str(err)
        time.sleep(interval)
    raise BenchError(f"{addr}:{port} did not answer 200 within {deadline_s} s (last: {last})")


def keepalive_requests(addr: str, port: int, count: int, deadline_s: float) -> None:
    """`count` sequential GETs on one keep-alive connection; every answer must be 200."""
    conn = http.client.HTTPConnection(addr, port, timeout=30)
    start = time.monotonic()
    try:
        for i in range(count):
            if time.monotonic() - start > deadline_s:
                raise BenchError(f"{count} requests took more than {deadline_s} s (done: {i})")
            conn.request("GET", "/", headers={"Accept": ACCEPT_JSON})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise BenchError(f"request {i} to {addr}:{port} answered {resp.status}")
    finally:
        conn.close()


# --- the servers ------------------------------------------------------------------------------


@dataclass
class Setup:
    """Where everything listens."""

    backend_port: int
    proxy_port: int
    dns_port: int
    pool_addrs: list[str]  # nginx addresses for --endpoints, NGINX_ADDRS first
    ttl: int


def proxy_dns_name(kind: str, name: str) -> str:
    """HAProxy asks for its own alias of each name, so that each proxy's queries can be counted
    while both run."""
    return name.replace(".internal", "-haproxy.internal") if kind == "haproxy" else name


def dns_names(setup: Setup, endpoint_counts: list[int]) -> dict[str, list[str]]:
    names = {"name.internal": NAME_ADDRS, "static.internal": NGINX_ADDRS}
    for n in endpoint_counts:
        names[f"ep{n}.internal"] = setup.pool_addrs[:n]
    return {alias: addrs for name, addrs in names.items()
            for alias in (name, proxy_dns_name("haproxy", name))}


def start_dnsmasq(children: Children, setup: Setup, names: dict[str, list[str]], work: Path):
    querylog = work / "dnsmasq-queries.log"
    querylog.write_text("")
    argv = [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", "--pid-file=", "--user=root", "--bind-interfaces",
        f"--listen-address={DNS_ADDR}", f"--port={setup.dns_port}",
        f"--local-ttl={setup.ttl}", "--edns-packet-max=8192", "--cache-size=0",
        "--log-queries", f"--log-facility={querylog}",
    ]
    # A local domain: never forwarded anywhere, NXDOMAIN for anything not listed.
    argv.append("--local=/internal/")
    for name, addrs in names.items():
        argv += [f"--host-record={name},{addr}" for addr in addrs]
    proc = children.start("dnsmasq", argv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children.check_alive(proc, "dnsmasq")
        if dns_answers(setup.dns_port, "static-haproxy.internal"):
            return proc, querylog
        time.sleep(0.05)
    raise BenchError("dnsmasq did not answer within 10 s")


def dns_answers(port: int, name: str) -> bool:
    """One A query over UDP; True when the answer has at least one record."""
    qid = random.randrange(65536)
    header = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    qname = b"".join(len(p).to_bytes(1, "big") + p.encode() for p in name.split(".")) + b"\x00"
    packet = header + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(packet, (DNS_ADDR, port))
            data = s.recv(4096)
        except OSError:
            return False
    return len(data) >= 12 and data[:2] == packet[:2] and int.from_bytes(data[6:8], "big") > 0


def dns_query_count(querylog: Path, name: str) -> int:
    """Queries dnsmasq logged for `name` (lines like `query[A] name.internal from 127.0.0.1`)."""
    needle = f"] {name} from "
    try:
        return sum(1 for line in querylog.read_text(errors="replace").splitlines()
                   if " query[" in line and needle in line)
    except OSError:
        return 0


def start_nginx(children: Children, setup: Setup, work: Path, cpu: int | None):
    conf = work / "nginx.conf"
    listens = "\n".join(f"        listen {a}:{setup.backend_port};" for a in setup.pool_addrs)
    instances = "\n".join(f"        {a} nginx-{i + 1};" for i, a in enumerate(setup.pool_addrs))
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    map $server_addr $instance {{
{instances}
    }}
    server {{
{listens}
        default_type application/json;
        location = /healthz {{ return 200 'ok'; }}
        location / {{ return 200 '{{"name":"{STATIC_NAME}","instance":"$instance"}}'; }}
    }}
}}
""")
    proc = children.start("nginx", ["nginx", "-e", str(work / "nginx-error.log"), "-p", str(work),
                                    "-c", str(conf)], cpu=cpu)
    for addr in setup.pool_addrs[:1] + setup.pool_addrs[-1:]:
        wait_for_200(addr, setup.backend_port, 10, proc)
    return proc


def start_names(children: Children, setup: Setup, bins: Path, cpu: int | None):
    procs = []
    for i, addr in enumerate(NAME_ADDRS):
        env = {"HOST": addr, "PORT": str(setup.backend_port), "INSTANCE_ID": f"name-{i + 1}",
               "WORKER_THREADS": "1"}
        procs.append(children.start(f"name-{i + 1}", [str(bins / "name")], cpu=cpu, env=env))
    for addr, proc in zip(NAME_ADDRS, procs):
        wait_for_200(addr, setup.backend_port, 15, proc)
    return procs


def hello_env(setup: Setup, dns_name: str, workers: str, access_log: str = "off") -> dict[str, str]:
    """hello's settings. ACCESS_LOG=off by default: HAProxy runs without logs, so the proxies
    are compared without them; the callgrind table measures `all` beside it."""
    env = {
        "HOST": HELLO_ADDR,
        "PORT": str(setup.proxy_port),
        "NAME_SERVICE_URL": f"http://{dns_name}:{setup.backend_port}",
        "DNS_SERVER": f"{DNS_ADDR}:{setup.dns_port}",
        "INSTANCE_ID": "hello-bench",
        "ACCESS_LOG": access_log,
    }
    if workers != "auto":
        env["WORKER_THREADS"] = workers
    return env


def haproxy_config(setup: Setup, dns_name: str, servers: int, work: Path) -> Path:
    conf = work / f"haproxy-{dns_name}.cfg"
    conf.write_text(f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    timeout connect 250ms
    timeout client 30s
    timeout server 1s
    timeout http-keep-alive 30s
    retries 2
    option redispatch 1

resolvers dns
    nameserver dnsmasq {DNS_ADDR}:{setup.dns_port}
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve {setup.ttl}s
    timeout retry 1s
    hold valid 30s
    hold obsolete 30s

frontend hello
    bind {HAPROXY_ADDR}:{setup.proxy_port}
    default_backend name

backend name
    # Power of two choices on the servers' load, as hello's picker.
    balance random(2)
    server-template name {servers} {dns_name}:{setup.backend_port} resolvers dns resolve-prefer ipv4 init-addr none
""")
    return conf


@dataclass
class Proxy:
    kind: str  # hello | haproxy | direct
    proc: subprocess.Popen
    addr: str
    port: int
    startup_s: float = 0.0
    idle_rss_kb: int = 0
    threads: list[str] = field(default_factory=list)
    dns_name: str = ""


def start_proxy(children: Children, kind: str, setup: Setup, dns_name: str, servers: int,
                bins: Path, work: Path, cpu: int, workers: str) -> Proxy:
    if kind == "hello":
        argv = [str(bins / "hello")]
        env = hello_env(setup, dns_name, workers)
        addr = HELLO_ADDR
    else:
        conf = haproxy_config(setup, proxy_dns_name(kind, dns_name), servers, work)
        argv = ["haproxy", "-db", "-f", str(conf)]
        env = {}
        addr = HAPROXY_ADDR
    start = time.monotonic()
    proc = children.start(f"{kind}-{dns_name}", argv, cpu=cpu, env=env)
    wait_for_200(addr, setup.proxy_port, 20, proc)
    startup = time.monotonic() - start
    time.sleep(0.2)
    return Proxy(kind, proc, addr, setup.proxy_port, startup, status_kb(proc.pid, "VmRSS"),
                 thread_names(proc.pid), proxy_dns_name(kind, dns_name))


# --- wrk ------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One measured row: a proxy (or none) in front of a backend, at one connection count."""

    backend: str
    proxy: str
    conns: int
    requests: int = 0
    errors: str = ""
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0
    wrk_p99_us: float = 0.0  # wrk's own, corrected for coordinated omission; for reference
    recorded: int = 0  # requests timed by bench.lua (wrk counts ones cut off at the end too)
    slow: int = 0  # requests timed at SLOW_US or more (outliers; their times go to the work dir)
    status_errors: int = 0  # answers with a status above 399, counted in req/s all the same
    cpu_us_per_req: float = 0.0
    peak_rss_kb: int = 0
    dns_queries: int | None = None
    upstream_conns: int | None = None
    upstream_endpoints: int | None = None  # distinct backend addresses connected to
    rss_under_load_kb: int = 0
    rps_runs: list[float] = field(default_factory=list)  # every repetition; the row is the median
    # The rest of the machine over the cell, per request: wrk's CPU, the backends' CPU (nginx,
    # or the three name processes), and the CPUs' idle time (all CPUs together).
    wrk_us_per_req: float = 0.0
    backend_us_per_req: float = 0.0
    idle_us_per_req: float = 0.0
    # Context switches per request: the proxy going to sleep, the proxy losing its CPU to another
    # task, and the backends going to sleep (each of those is a wake-up later).
    proxy_sleeps_per_req: float = 0.0
    proxy_preempted_per_req: float = 0.0
    backend_sleeps_per_req: float = 0.0


def parse_wrk_out(path: Path) -> dict:
    """The file bench.lua writes: wrk's summary, its own (corrected) percentiles, and the
    histogram of per-request latencies the threads recorded."""
    info: dict = {"hist": {}}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] in ("duration_us", "requests", "bytes", "wrk_p50", "wrk_p99", "wrk_max"):
            info[parts[0]] = int(parts[1])
        elif parts[0] == "slow":
            info.setdefault("slow", []).append((int(parts[1]), int(parts[2])))
        elif parts[0] == "errors":
            info["errors"] = dict(zip(("connect", "read", "write", "status", "timeout"),
                                      map(int, parts[1:])))
        else:
            info["hist"][int(parts[0])] = int(parts[1])
    return info


def percentile(hist: dict[int, int], p: float) -> int:
    total = sum(hist.values())
    if total == 0:
        return 0
    rank = max(1, int(-(-p * total // 100)))  # nearest rank, ceil(p/100 * total)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


class Load:
    """wrk runs, pinned to one core."""

    def __init__(self, children: Children, work: Path, cpu: int, duration: int, plain: bool):
        self.plain = plain
        self.children = children
        self.work = work
        self.cpu = cpu
        self.duration = duration
        self.lua = Path(__file__).resolve().parent / "bench.lua"

    def run(self, addr: str, port: int, conns: int, duration: int | None = None,
            sample=None) -> dict:
        duration = duration or self.duration
        out = self.work / f"wrk-{addr}-{port}-{conns}.txt"
        out.unlink(missing_ok=True)
        # One connection per thread: bench.lua times each request itself (see there why).
        # --wrk-plain: one thread, no Lua per request, wrk's corrected percentiles.
        threads = 1 if self.plain else conns
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "2s", "-s", str(self.lua),
                "-H", f"Accept: {ACCEPT_JSON}", f"http://{addr}:{port}/"]
        env = {"BENCH_WRK_OUT": str(out), "BENCH_WRK_PLAIN": "1" if self.plain else "0"}
        proc = self.children.start("wrk", argv, cpu=self.cpu, env=env)
        deadline = time.monotonic() + duration + 30
        while proc.poll() is None:
            if time.monotonic() > deadline:
                self.children.stop(proc, signal.SIGKILL)
                raise BenchError(f"wrk against {addr}:{port} did not finish")
            if sample is not None:
                sample()
            time.sleep(0.25)
        self.children.stop(proc)
        if proc.returncode != 0 or not out.exists():
            raise BenchError(f"wrk against {addr}:{port} failed (exit {proc.returncode}); "
                             f"see {self.children.logs / 'wrk.log'}")
        return parse_wrk_out(out)


def median_cell(runs: list[Cell]) -> Cell:
    """The repetition with the median req/s, carrying every repetition's req/s."""
    median = sorted(runs, key=lambda cell: cell.rps)[len(runs) // 2]
    median.rps_runs = [round(cell.rps) for cell in runs]
    return median


def measure(load: Load, backend: str, proxy: str, target_pid: int, addr: str, port: int,
            conns: int, querylog: Path | None = None, dns_name: str = "",
            backend_port: int | None = None, duration: int | None = None,
            backend_pids: tuple[int, ...] = ()) -> Cell:
    cell = Cell(backend, proxy, conns)
    reset_peak_rss(target_pid)
    q0 = dns_query_count(querylog, dns_name) if querylog else 0
    cpu0 = cpu_seconds(target_pid)
    rest0 = (reaped_children_cpu_seconds(), sum(map(cpu_seconds, backend_pids)),
             machine_idle_seconds())
    switches0 = (*context_switches(target_pid), sum(context_switches(p)[0] for p in backend_pids))
    peak_conns = [0, 0]

    def sample() -> None:
        if backend_port is not None:
            conns_now, remotes = established_to_port(target_pid, backend_port)
            peak_conns[0] = max(peak_conns[0], conns_now)
            peak_conns[1] = max(peak_conns[1], remotes)

    started_us = time.monotonic_ns() // 1000
    info = load.run(addr, port, conns, duration, sample)
    cpu1 = cpu_seconds(target_pid)
    rest1 = (reaped_children_cpu_seconds(), sum(map(cpu_seconds, backend_pids)),
             machine_idle_seconds())
    switches1 = (*context_switches(target_pid), sum(context_switches(p)[0] for p in backend_pids))
    if info.get("slow"):
        # When each outlier started, in ms from the cell's start, to set beside the logs.
        slow_log = load.work / f"slow-{backend}-{proxy}-{conns}.txt"
        slow_log.write_text("".join(f"{(start - started_us) / 1000:.1f} ms: {took / 1000:.1f} ms\n"
                                    for start, took in sorted(info["slow"])))
    time.sleep(0.1)  # let dnsmasq's log catch up
    cell.requests = info["requests"]
    cell.status_errors = info["errors"]["status"]
    errs = {k: v for k, v in info["errors"].items() if v}
    cell.errors = ", ".join(f"{k} {v}" for k, v in errs.items())
    cell.rps = info["requests"] / (info["duration_us"] / 1e6) if info["duration_us"] else 0.0
    if load.plain:
        cell.p50_us = info.get("wrk_p50", 0)
        cell.p99_us = info.get("wrk_p99", 0)
        cell.max_us = info.get("wrk_max", 0)
    else:
        cell.p50_us = percentile(info["hist"], 50)
        cell.p99_us = percentile(info["hist"], 99)
        cell.max_us = max(info["hist"]) if info["hist"] else 0
        cell.slow = sum(n for us_, n in info["hist"].items() if us_ >= SLOW_US)
    cell.wrk_p99_us = info.get("wrk_p99", 0)
    cell.recorded = sum(info["hist"].values())
    cell.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / info["requests"] if info["requests"] else 0.0
    if info["requests"]:
        cell.wrk_us_per_req, cell.backend_us_per_req, cell.idle_us_per_req = (
            (b - a) * 1e6 / info["requests"] for a, b in zip(rest0, rest1))
        cell.proxy_sleeps_per_req, cell.proxy_preempted_per_req, cell.backend_sleeps_per_req = (
            (b - a) / info["requests"] for a, b in zip(switches0, switches1))
    cell.peak_rss_kb = status_kb(target_pid, "VmHWM")
    cell.rss_under_load_kb = cell.peak_rss_kb
    if querylog is not None:
        cell.dns_queries = dns_query_count(querylog, dns_name) - q0
    if backend_port is not None:
        cell.upstream_conns = peak_conns[0]
        cell.upstream_endpoints = peak_conns[1]
    log(f"{backend:6} {proxy:7} c{conns:<3} {cell.rps:10.0f} req/s  p50 {cell.p50_us} us  "
        f"p99 {cell.p99_us} us  max {cell.max_us} us  cpu {cell.cpu_us_per_req:.1f} us/req"
        f"  (wrk {cell.wrk_us_per_req:.1f}, backend {cell.backend_us_per_req:.1f}, "
        f"idle {cell.idle_us_per_req:.1f}; switches {switch_split([cell])})"
        + (f"  errors: {cell.errors}" if cell.errors else ""))
    return cell


# --- callgrind ------------------------------------------------------------------------------------


@dataclass
class Profile:
    proxy: str
    requests: int
    instructions: int = 0
    per_request: float = 0.0
    method: str = ""
    profile_file: str = ""
    annotate_file: str = ""
    # --cache-sim: simulated cache misses per request (data reads and writes that miss the
    # L1 data cache; instruction and data accesses that miss the last level).
    d1_misses_per_request: float = 0.0
    ll_misses_per_request: float = 0.0


# --cache-sim: a core's caches as recent x86 server cores have them, the same on every machine
# so that runs compare: 32 KiB 8-way L1 instruction and data caches, and a 1 MiB 16-way last
# level (a core's L2; valgrind simulates two levels).
CACHE_SIM = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]


def callgrind_totals(path: Path) -> dict[str, int]:
    """The file's `totals:` line by event name, Ir first (its `summary:` says 0 when collection
    started switched off)."""
    events, totals, summary = ["Ir"], None, None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:"):
            totals = [int(v) for v in line.split()[1:]]
        elif line.startswith("summary:"):
            summary = [int(v) for v in line.split()[1:]]
    if totals is None and summary is None:
        raise BenchError(f"no totals in {path}")
    return dict(zip(events, totals if totals is not None else summary))


def callgrind_control(pid: int, command: list[str], child_env: dict[str, str]) -> bool:
    # valgrind names its vgdb pipes after $HOST, which hello's settings use too: give
    # callgrind_control the child's value or it looks for pipes that do not exist.
    env = dict(os.environ)
    env.pop("HOST", None)
    if "HOST" in child_env:
        env["HOST"] = child_env["HOST"]
    try:
        res = subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True,
                             text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        log(f"callgrind_control {command} {pid} timed out")
        return False
    if res.returncode != 0 or "OK" not in res.stdout:
        log(f"callgrind_control {command} {pid} failed: {(res.stdout + res.stderr).strip()}")
        return False
    return True


def run_callgrind(children: Children, kind: str, setup: Setup, dns_name: str, bins: Path,
                  work: Path, out_dir: Path, requests: int, warmup: int, workers: str,
                  access_log: str = "off", cache_sim: bool = False) -> Profile:
    """Instructions per request of `kind` under callgrind: started with collection off, warmed
    up, collection switched on for `requests` sequential keep-alive requests and off again, then
    stopped, so the profile holds those requests only. (Zeroing or dumping in the middle of a
    run leaves the calls then in progress misattributed by callgrind_annotate.) Where
    callgrind_control cannot reach the process, falls back to the difference between a run
    with and one without the requests. hello runs with `access_log` as ACCESS_LOG."""
    label = kind if kind != "hello" or access_log == "off" else f"hello ACCESS_LOG={access_log}"
    name = kind if label == kind else f"{kind}-access-{access_log}"
    prof = Profile(label, requests)

    def one_run(measured: int, tag: str, toggle: bool) -> tuple[dict[str, int], Path, bool]:
        outfile = out_dir / f"callgrind.{name}.{tag}.out"
        for old in out_dir.glob(f"callgrind.{name}.{tag}.out*"):
            old.unlink()
        if kind == "hello":
            argv = [str(bins / "hello")]
            env = hello_env(setup, dns_name, workers, access_log)
            addr = HELLO_ADDR
        else:
            conf = haproxy_config(setup, proxy_dns_name(kind, dns_name), 3, work)
            argv = ["haproxy", "-db", "-f", str(conf)]
            env = {}
            addr = HAPROXY_ADDR
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outfile}",
              "--dump-instr=no", "--collect-jumps=no", *(CACHE_SIM if cache_sim else [])]
        if toggle:
            vg.append("--instr-atstart=no")
        proc = children.start(f"callgrind-{name}", [*vg, *argv], env=env)
        toggled = False
        try:
            wait_for_200(addr, setup.proxy_port, 90, proc, interval=0.1)
            keepalive_requests(addr, setup.proxy_port, warmup, 120)
            if toggle:
                toggled = callgrind_control(proc.pid, ["-i", "on"], env)
            if measured and (toggled or not toggle):
                keepalive_requests(addr, setup.proxy_port, measured, 600)
            if toggled:
                toggled = callgrind_control(proc.pid, ["-i", "off"], env)
        finally:
            children.stop(proc, signal.SIGTERM, wait=60)
        return callgrind_totals(outfile), outfile, toggled

    total, path, isolated = one_run(requests, "run", toggle=True)
    if isolated:
        prof.method = "collection switched on after warm-up and off after the requests"
    else:
        total, path, _ = one_run(requests, "run", toggle=False)
        base, _, _ = one_run(0, "base", toggle=False)
        total = {event: count - base.get(event, 0) for event, count in total.items()}
        prof.method = ("difference between runs with and without the requests (startup cancels; "
                       "the profile includes startup)")
    prof.instructions = total["Ir"]
    prof.per_request = prof.instructions / requests
    if cache_sim:
        prof.d1_misses_per_request = (total.get("D1mr", 0) + total.get("D1mw", 0)) / requests
        prof.ll_misses_per_request = sum(total.get(e, 0) for e in ("ILmr", "DLmr", "DLmw")) / requests
    prof.profile_file = str(path)
    annotate = out_dir / f"callgrind.{name}.top.txt"
    with annotate.open("w") as f:
        f.write(f"# {label}: {requests} sequential keep-alive requests, {prof.method}\n")
        f.write(f"# instructions: {prof.instructions}, per request: {prof.per_request:.0f}\n\n")
        for inclusive in ("no", "yes"):
            f.write(f"## callgrind_annotate --inclusive={inclusive} (top 25)\n\n")
            res = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", "--threshold=100",
                                  str(path)], capture_output=True, text=True, timeout=120)
            f.write(top_functions(res.stdout, 25))
            f.write("\n")
    prof.annotate_file = str(annotate)
    log(f"callgrind {label}: {prof.per_request:.0f} instructions/request; top functions in {annotate}")
    return prof


def top_functions(annotate_output: str, n: int) -> str:
    """The program total and the first `n` function lines of callgrind_annotate's output."""
    out, taken, in_table = [], 0, False
    for line in annotate_output.splitlines():
        if "PROGRAM TOTALS" in line:
            out.append(line)
        elif "file:function" in line:
            in_table = True
            out.append(line)
        elif in_table and line.strip() and not line.startswith("--"):
            out.append(line)
            taken += 1
            if taken >= n:
                break
        elif in_table and taken and not line.strip():
            break
    return "\n".join(out) + "\n"


# --- tables ----------------------------------------------------------------------------------------


def us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.1f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def runs_k(rps_runs: list[float]) -> str:
    return " ".join(f"{r / 1000:.1f}k" for r in rps_runs)


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def main_table(cells: list[Cell]) -> str:
    head = ("| backend | path | conns | req/s | p50 | p99 | max | ≥ 10 ms | CPU/req | peak RSS "
            "| DNS queries | req/s hello/HAProxy | req/s hello/direct | req/s of each run |")
    rows = [head, "|" + "---|" * 14]
    by_key = {(c.backend, c.proxy, c.conns): c for c in cells}
    for c in cells:
        ha = by_key.get((c.backend, "haproxy", c.conns))
        direct = by_key.get((c.backend, "direct", c.conns))
        r_ha = ratio(c.rps, ha.rps) if c.proxy == "hello" and ha else ""
        r_direct = ratio(c.rps, direct.rps) if c.proxy == "hello" and direct else ""
        dns = "–" if c.dns_queries is None else str(c.dns_queries)
        rows.append(f"| {c.backend} | {c.proxy} | {c.conns} | {c.rps:,.0f} | {us(c.p50_us)} | "
                    f"{us(c.p99_us)} | {us(c.max_us)} | {c.slow:,} | {c.cpu_us_per_req:.1f} µs | "
                    f"{mb(c.peak_rss_kb)} | {dns} | {r_ha} | {r_direct} | {runs_k(c.rps_runs)} |")
    return "\n".join(rows) + "\n"


def ratio_table(cells: list[Cell]) -> str:
    by_key = {(c.backend, c.proxy, c.conns): c for c in cells}
    rows = ["| backend | conns | vs | req/s | p50 | p99 | CPU/req | peak RSS |", "|" + "---|" * 8]
    for c in cells:
        if c.proxy != "hello":
            continue
        for other in ("haproxy", "direct"):
            o = by_key.get((c.backend, other, c.conns))
            if not o:
                continue
            rows.append(f"| {c.backend} | {c.conns} | hello/{other} | {ratio(c.rps, o.rps)} | "
                        f"{ratio(c.p50_us, o.p50_us)} | {ratio(c.p99_us, o.p99_us)} | "
                        f"{ratio(c.cpu_us_per_req, o.cpu_us_per_req)} | "
                        f"{ratio(c.peak_rss_kb, o.peak_rss_kb)} |")
    return "\n".join(rows) + "\n"


def startup_table(proxies: list[dict]) -> str:
    rows = ["| backend | proxy | start to first 200 | idle RSS | threads |", "|---|---|---|---|---|"]
    for p in proxies:
        rows.append(f"| {p['backend']} | {p['kind']} | {p['startup_s'] * 1000:.0f} ms | "
                    f"{mb(p['idle_rss_kb'])} | {len(p['threads'])} ({', '.join(sorted(set(p['threads'])))}) |")
    return "\n".join(rows) + "\n"


def callgrind_table(profiles: list[Profile]) -> str:
    """One row per profile; then hello (ACCESS_LOG=off) against HAProxy (no logs), and what an
    access line per request costs."""
    if any(p.d1_misses_per_request for p in profiles):
        return cache_table(profiles)
    rows = ["| proxy | requests | instructions/request | profile |", "|---|---|---|---|"]
    for p in profiles:
        rows.append(f"| {p.proxy} | {p.requests} | {p.per_request:,.0f} | {p.annotate_file} |")
    by_proxy = {p.proxy: p.per_request for p in profiles}
    hello, haproxy = by_proxy.get("hello"), by_proxy.get("haproxy")
    logged = by_proxy.get("hello ACCESS_LOG=all")
    if hello and haproxy:
        rows.append(f"| hello/HAProxy (ACCESS_LOG=off) | | {hello / haproxy:.2f} | |")
    if hello and logged:
        rows.append(f"| ACCESS_LOG=all minus off | | {logged - hello:+,.0f} ({(logged / hello - 1) * 100:+.1f} %) | |")
    if logged and haproxy:
        rows.append(f"| hello/HAProxy (ACCESS_LOG=all) | | {logged / haproxy:.2f} | |")
    return "\n".join(rows) + "\n"


def cache_table(profiles: list[Profile]) -> str:
    """--cache-sim: instructions and simulated cache misses per request, and hello against
    HAProxy for each."""
    rows = ["| proxy | requests | instructions/request | L1 data misses/request | last-level "
            "misses/request |", "|---|---|---|---|---|"]
    for p in profiles:
        rows.append(f"| {p.proxy} | {p.requests} | {p.per_request:,.0f} | "
                    f"{p.d1_misses_per_request:,.1f} | {p.ll_misses_per_request:,.1f} |")
    by_proxy = {p.proxy: p for p in profiles}
    hello, haproxy = by_proxy.get("hello"), by_proxy.get("haproxy")
    if hello and haproxy and haproxy.d1_misses_per_request and haproxy.ll_misses_per_request:
        rows.append(f"| hello/HAProxy (ACCESS_LOG=off) | | {hello.per_request / haproxy.per_request:.2f} | "
                    f"{hello.d1_misses_per_request / haproxy.d1_misses_per_request:.1f} | "
                    f"{hello.ll_misses_per_request / haproxy.ll_misses_per_request:.1f} |")
    return "\n".join(rows) + "\n"


def endpoints_table(cells: list[Cell]) -> str:
    rows = ["| endpoints | proxy | req/s | p99 | upstream connections (max during load) | endpoints "
            "connected | RSS under load (VmHWM) | CPU/req | DNS queries | req/s of each run |",
            "|" + "---|" * 10]
    for c in cells:
        rows.append(f"| {c.backend} | {c.proxy} | {c.rps:,.0f} | {us(c.p99_us)} | {c.upstream_conns} | "
                    f"{c.upstream_endpoints} | {mb(c.rss_under_load_kb)} | {c.cpu_us_per_req:.1f} µs | "
                    f"{c.dns_queries} | {runs_k(c.rps_runs)} |")
    return "\n".join(rows) + "\n"


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median: the order statistics k and
    n+1-k, with k the largest such that a fair coin shows k-1 or fewer heads in n throws with
    probability at most (1 - confidence) / 2. None below 6 values (too few for 95 %)."""
    n = len(values)
    tail = (1 - confidence) / 2
    below, k = 0.0, 0
    while k < n // 2:
        below += math.comb(n, k) / 2 ** n
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def medians(cells: list[Cell], fields: tuple[str, ...], digits: int) -> str:
    """The medians over `cells` of each of `fields`, joined with commas."""
    return ", ".join(f"{statistics.median(getattr(c, f) for c in cells):.{digits}f}" for f in fields)


def cpu_split(cells: list[Cell]) -> str:
    """The proxy's, wrk's, the backends' and idle CPU per request (medians over `cells`)."""
    return medians(cells, ("cpu_us_per_req", "wrk_us_per_req", "backend_us_per_req",
                           "idle_us_per_req"), 1)


def switch_split(cells: list[Cell]) -> str:
    """Context switches per request (medians over `cells`): the proxy slept, the proxy was
    preempted, the backends slept."""
    return medians(cells, ("proxy_sleeps_per_req", "proxy_preempted_per_req",
                           "backend_sleeps_per_req"), 3)


def paired_table(runs: dict[str, dict[str, list[Cell]]]) -> str:
    """hello against HAProxy cell by cell: repetition i of each ran back to back, so their ratio
    cancels what the machine was doing then. The median ratio, its 95 % interval, where each
    request's CPU went (medians over the repetitions, in µs per request) and the context switches
    per request. Empty without pairs."""
    rows = ["| cell | pairs | hello/HAProxy req/s (median of pairs) | 95 % interval | pairs "
            "hello ahead | hello: proxy, wrk, backend, idle CPU/req | HAProxy: proxy, wrk, backend, "
            "idle CPU/req | context switches/req, hello: proxy slept, proxy preempted, "
            "backend slept | the same, HAProxy |", "|" + "---|" * 9]
    for label, by_proxy in runs.items():
        hello, haproxy = by_proxy.get("hello", []), by_proxy.get("haproxy", [])
        ratios = [h.rps / o.rps for h, o in zip(hello, haproxy) if o.rps]
        if not ratios:
            continue
        ci = median_ci(ratios)
        rows.append(f"| {label} | {len(ratios)} | {statistics.median(ratios):.3f} | "
                    + (f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "(6 pairs or more)")
                    + f" | {sum(r > 1 for r in ratios)} | {cpu_split(hello)} | {cpu_split(haproxy)} "
                    f"| {switch_split(hello)} | {switch_split(haproxy)} |")
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def pooled_table(paths: list[str]) -> str:
    """hello against HAProxy over several runs' results.json: every repetition's pair of req/s
    (hello's i-th against HAProxy's i-th, which ran back to back) from each run, pooled per
    cell. One run's 6-20 pairs leave an interval of +-10 % on a shared machine; pooling runs
    narrows it. The CPU split is per repetition only in the run's own report, so it is left out."""
    pooled: dict[tuple[str, str, int], list[float]] = {}
    runs: dict[tuple[str, str, int], int] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        for mode, label in (("cells", "{} backend"), ("endpoints", "{} A records")):
            rows = result.get(mode, [])
            by_key = {(r["backend"], r["conns"], r["proxy"]): r for r in rows}
            for (backend, conns, proxy), hello in by_key.items():
                haproxy = by_key.get((backend, conns, "haproxy"))
                if proxy != "hello" or haproxy is None:
                    continue
                key = (label.format(backend), backend, conns)
                pairs = [h / o for h, o in zip(hello["rps_runs"], haproxy["rps_runs"]) if o]
                pooled.setdefault(key, []).extend(pairs)
                runs[key] = runs.get(key, 0) + 1
    rows = ["| cell | connections | runs | pairs | hello/HAProxy req/s (median of pairs) | "
            "95 % interval | pairs hello ahead | geometric mean |", "|" + "---|" * 8]
    for key, ratios in pooled.items():
        ci = median_ci(ratios)
        # A hello cell that answered nothing has a ratio of 0, and no geometric mean.
        geomean = (f"{math.exp(statistics.fmean(math.log(r) for r in ratios)):.3f}"
                   if min(ratios) > 0 else "-")
        rows.append(f"| {key[0]} | {key[2]} | {runs[key]} | {len(ratios)} | "
                    f"{statistics.median(ratios):.3f} | "
                    + (f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "(6 pairs or more)")
                    + f" | {sum(r > 1 for r in ratios)} | {geomean} |")
    if len(rows) == 2:
        raise BenchError("no cell with both hello and HAProxy in " + ", ".join(paths))
    return "\n".join(rows) + "\n"


def check_table(table: str, columns: int, rps_column: int) -> None:
    """Smoke assertion: the table parses back, every row has `columns` cells and a req/s > 0."""
    rows = [r for r in table.strip().splitlines()[2:] if r.startswith("|")]
    if not rows:
        raise BenchError("the table has no rows")
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) != columns:
            raise BenchError(f"row does not parse: {row}")
        if float(cells[rps_column].replace(",", "")) <= 0:
            raise BenchError(f"zero req/s in: {row}")


# --- machine ---------------------------------------------------------------------------------------


def tool_version(argv: list[str], pattern: str) -> str:
    if not shutil.which(argv[0]):
        return "not installed"
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, res.stdout + res.stderr)
    return m.group(1) if m else "unknown"


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "haproxy": tool_version(["haproxy", "-v"], r"HAProxy version (\S+)"),
        "nginx": tool_version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": tool_version(["wrk", "-v"], r"wrk (\S+)"),
        "dnsmasq": tool_version(["dnsmasq", "-v"], r"Dnsmasq version (\S+)"),
        "valgrind": tool_version(["valgrind", "--version"], r"valgrind-(\S+)"),
        "rustc": tool_version(["rustc", "-V"], r"rustc (\S+)"),
        "loadavg_start": loadavg(),
    }


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.split("\n")[0],
        epilog="scripts/bench also takes --no-install (no apt-get) and --no-build (use the binaries "
               "in target/); it sets --bin-dir, --symbols-bin-dir and --out. Method and results: "
               "docs/performance.md.")
    p.add_argument("--smoke", action="store_true",
                   help="very short runs for CI: 1 s cells, 32 connections, 200 callgrind requests; "
                        "asserts numbers were produced, never a time")
    p.add_argument("--duration", type=int, default=5, help="seconds per cell (default 5)")
    p.add_argument("--repeat", type=int, default=3,
                   help="repetitions of each cell, taking turns; rows are medians (default 3)")
    p.add_argument("--conns", default="1,32", help="connection counts (default 1,32)")
    p.add_argument("--backends", default="nginx,name", help="nginx, name or both (default both)")
    p.add_argument("--callgrind-requests", type=int, default=2000,
                   help="sequential requests measured under callgrind; 0 skips callgrind (default 2000)")
    p.add_argument("--cache-sim", action="store_true",
                   help="callgrind also simulates the caches (32 KiB L1, 1 MiB last level): L1 data "
                        "and last-level misses per request beside the instructions")
    p.add_argument("--endpoints", default="",
                   help="scaling mode: instead of the main table, for each count of A records "
                        "(e.g. 3,8,32,128) drive 32 connections through hello and HAProxy and report "
                        "upstream connections and RSS")
    p.add_argument("--hello-workers", default="1",
                   help="WORKER_THREADS for hello, or 'auto' for its default, the CPUs it may use (default 1)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of the DNS records, seconds (default 5)")
    p.add_argument("--cpus", default="0,1", help="cores for load generator,proxy (default 0,1)")
    p.add_argument("--backend-cpu", default="none",
                   help="where nginx and name run: 'none' (default) leaves them to the scheduler, "
                        "which places them by how often the proxy's core is idle (docs/performance.md); "
                        "'load' pins them with wrk; or a core's number")
    p.add_argument("--wrk-plain", action="store_true",
                   help="wrk with one thread and no Lua per request: the cheapest load generator, "
                        "but latencies are wrk's own, corrected for coordinated omission")
    p.add_argument("--no-haproxy", action="store_true", help="leave HAProxy out even if installed")
    p.add_argument("--baseline", help="results.json of an earlier run: print hello's change against it")
    p.add_argument("--pool", nargs="+", metavar="RESULTS_JSON",
                   help="run nothing: pool the hello/HAProxy pairs of these runs' results.json per cell "
                        "and print their median, 95 %% interval and geometric mean")
    p.add_argument("--bin-dir", help="directory of the release binaries (set by scripts/bench)")
    p.add_argument("--symbols-bin-dir", help="directory of binaries with symbols, for callgrind")
    p.add_argument("--out", help="directory for results (set by scripts/bench: target/bench)")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-install", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.pool and not (args.bin_dir and args.out):
        p.error("--bin-dir and --out are required (scripts/bench sets them)")
    # The backends' core, resolved once: None when the scheduler places them.
    if args.backend_cpu == "none":
        args.backend_core = None
    elif args.backend_cpu == "load":
        args.backend_core = int(args.cpus.split(",")[0])
    elif args.backend_cpu.isdigit():
        args.backend_core = int(args.backend_cpu)
    else:
        p.error(f"--backend-cpu: 'none', 'load' or a core's number, not {args.backend_cpu!r}")
    if args.smoke:
        args.duration = 1
        args.repeat = 1
        args.conns = "32"
        args.callgrind_requests = min(args.callgrind_requests, 200)
    return args


def run(args: argparse.Namespace, children: Children, work: Path, out_dir: Path) -> dict:
    bins = Path(args.bin_dir)
    sym_bins = Path(args.symbols_bin_dir) if args.symbols_bin_dir else bins
    load_cpu, proxy_cpu = (int(c) for c in args.cpus.split(","))
    conns = [int(c) for c in args.conns.split(",") if c]
    backends = [b for b in args.backends.split(",") if b]
    endpoint_counts = [int(n) for n in args.endpoints.split(",") if n]
    have_haproxy = shutil.which("haproxy") is not None and not args.no_haproxy
    proxies = ["hello"] + (["haproxy"] if have_haproxy else [])
    notes = []
    if not have_haproxy:
        notes.append("HAProxy is not installed (or --no-haproxy): its rows and ratios are skipped.")

    pool_size = max([3, *endpoint_counts])
    pool = NGINX_ADDRS + [f"127.0.1.{i}" for i in range(1, pool_size - 2)]
    setup = Setup(
        backend_port=free_port(NAME_ADDRS + pool),
        proxy_port=free_port([HELLO_ADDR, HAPROXY_ADDR]),
        dns_port=free_port([DNS_ADDR], udp=True),
        pool_addrs=pool,
        ttl=args.ttl,
    )
    result: dict = {"machine": machine(), "args": {k: v for k, v in vars(args).items()},
                    "setup": asdict(setup), "notes": notes}
    _, querylog = start_dnsmasq(children, setup, dns_names(setup, endpoint_counts), work)
    nginx = start_nginx(children, setup, work, cpu=args.backend_core)
    load = Load(children, work, load_cpu, args.duration, args.wrk_plain)

    if endpoint_counts:
        cells = []
        paired: dict[str, dict[str, list[Cell]]] = {}
        for n in endpoint_counts:
            running = []
            for kind in proxies:
                px = start_proxy(children, kind, setup, f"ep{n}.internal", n, bins, work, proxy_cpu,
                                 args.hello_workers)
                load.run(px.addr, px.port, 32, duration=min(2, args.duration))  # warm-up
                running.append(px)
            runs: dict[str, list[Cell]] = {}
            for _ in range(args.repeat):
                for px in running:
                    runs.setdefault(px.kind, []).append(
                        measure(load, str(n), px.kind, px.proc.pid, px.addr, px.port, 32, querylog,
                                px.dns_name, backend_port=setup.backend_port,
                                backend_pids=(nginx.pid,)))
            for px in running:
                cells.append(median_cell(runs[px.kind]))
                children.stop(px.proc)
            paired[f"{n} A records"] = runs
        result["endpoints"] = [asdict(c) for c in cells]
        result["tables"] = {"endpoints": endpoints_table(cells), "paired": paired_table(paired)}
        result["machine"]["loadavg_end"] = loadavg()
        return result

    names = start_names(children, setup, bins, cpu=args.backend_core) if "name" in backends else []
    cells: list[Cell] = []
    paired = {}
    started: list[dict] = []
    for backend in backends:
        dns_name = "static.internal" if backend == "nginx" else "name.internal"
        direct_addr = NGINX_ADDRS[0] if backend == "nginx" else NAME_ADDRS[0]
        direct_pid = nginx.pid if backend == "nginx" else names[0].pid
        backend_pids = (nginx.pid,) if backend == "nginx" else tuple(p.pid for p in names)
        # Both proxies run side by side, idle while the other is measured, and the cells take
        # turns (direct, hello, HAProxy, again), so that load from elsewhere on the machine falls
        # on all of them alike; each row is the repetition with the median req/s.
        running = []
        for kind in proxies:
            px = start_proxy(children, kind, setup, dns_name, 3, bins, work, proxy_cpu,
                             args.hello_workers)
            started.append({"backend": backend, "kind": kind, "startup_s": px.startup_s,
                            "idle_rss_kb": px.idle_rss_kb, "threads": px.threads})
            load.run(px.addr, px.port, 32, duration=1 if args.smoke else 2)  # warm-up
            running.append(px)
        runs: dict[tuple[str, int], list[Cell]] = {}
        for _ in range(args.repeat):
            for c in conns:
                runs.setdefault(("direct", c), []).append(
                    measure(load, backend, "direct", direct_pid, direct_addr, setup.backend_port, c))
                for px in running:
                    children.check_alive(px.proc, f"{px.kind}-{dns_name}")
                    runs.setdefault((px.kind, c), []).append(
                        measure(load, backend, px.kind, px.proc.pid, px.addr, px.port, c, querylog,
                                px.dns_name, backend_port=setup.backend_port,
                                backend_pids=backend_pids))
        for c in conns:
            paired[f"{backend}, {c} connections"] = {kind: runs[(kind, c)] for kind in proxies}
        for path in ["direct", *proxies]:
            for c in conns:
                cells.append(median_cell(runs[(path, c)]))
        for px in running:
            children.stop(px.proc)

    profiles: list[Profile] = []
    if args.callgrind_requests > 0:
        if shutil.which("valgrind") is None:
            notes.append("valgrind is not installed: no instructions per request.")
        else:
            warmup = 50 if args.smoke else 200
            for kind in proxies:
                profiles.append(run_callgrind(children, kind, setup, "static.internal", sym_bins, work,
                                              out_dir, args.callgrind_requests, warmup,
                                              args.hello_workers, cache_sim=args.cache_sim))
            # What an access line per request costs: hello again, with ACCESS_LOG=all.
            profiles.append(run_callgrind(children, "hello", setup, "static.internal", sym_bins, work,
                                          out_dir, args.callgrind_requests, warmup,
                                          args.hello_workers, access_log="all",
                                          cache_sim=args.cache_sim))
    result["cells"] = [asdict(c) for c in cells]
    result["startup"] = started
    result["profiles"] = [asdict(p) for p in profiles]
    result["tables"] = {
        "main": main_table(cells),
        "ratios": ratio_table(cells),
        "startup": startup_table(started),
        "callgrind": callgrind_table(profiles) if profiles else "",
        "paired": paired_table(paired),
    }
    result["machine"]["loadavg_end"] = loadavg()
    return result


def report(result: dict, args: argparse.Namespace) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; haproxy {m['haproxy']}, "
        f"nginx {m['nginx']}, wrk {m['wrk']}, dnsmasq {m['dnsmasq']}, valgrind {m['valgrind']}, "
        f"{m['rustc']}; load average {m['loadavg_start']} at start, {m['loadavg_end']} at end.",
        f"wrk ({'one thread' if args.wrk_plain else 'one connection per thread'}) pinned to CPU "
        f"{args.cpus.split(',')[0]}, the proxy to CPU "
        f"{args.cpus.split(',')[1]}, backends "
        + ("unpinned" if args.backend_core is None else f"pinned to CPU {args.backend_core}")
        + f"; {args.duration} s per cell, median of "
        f"{args.repeat} taking turns; every request "
        f"sends Accept: application/json; hello with WORKER_THREADS={args.hello_workers} and "
        f"ACCESS_LOG=off (HAProxy logs nothing; the callgrind table adds hello with ACCESS_LOG=all), "
        f"HAProxy with nbthread 1; DNS TTL {args.ttl} s.",
        ("Latencies are wrk's own percentiles, CORRECTED for coordinated omission (--wrk-plain). "
         if args.wrk_plain else
         "Latencies are per request, timed by bench.lua in each wrk thread (not wrk's percentiles, "
         "which are corrected for coordinated omission). ") +
        "CPU/req is the process's utime+stime over "
        "the cell divided by its requests; peak RSS is VmHWM, reset before each cell; DNS queries "
        "are dnsmasq's logged queries during the cell.",
        "",
    ]
    tables = result["tables"]
    if "endpoints" in tables:
        lines += ["## Scaling with endpoints (32 connections)", "", tables["endpoints"]]
    else:
        lines += ["## Throughput and latency", "", tables["main"], "## Ratios (same run)", "",
                  tables["ratios"], "## Start-up", "", tables["startup"]]
        if tables.get("callgrind"):
            lines += ["## Instructions per request (callgrind, sequential keep-alive)", "",
                      tables["callgrind"]]
    if tables.get("paired"):
        lines += ["## hello against HAProxy, repetition by repetition", "", tables["paired"]]
    for c in result.get("cells", []) + result.get("endpoints", []):
        if c["errors"]:
            lines.append(f"Note: {c['backend']} {c['proxy']} {c['conns']} connections: wrk counted "
                         f"errors ({c['errors']}) among {c['requests']} requests.")
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def baseline_report(result: dict, baseline_path: str) -> str:
    old = json.loads(Path(baseline_path).read_text())
    old_cells = {(c["backend"], c["proxy"], c["conns"]): c for c in old.get("cells", [])}
    rows = ["| backend | conns | hello req/s before → now | CPU/req before → now | p99 before → now |",
            "|---|---|---|---|---|"]
    for c in result.get("cells", []):
        o = old_cells.get((c["backend"], c["proxy"], c["conns"]))
        if c["proxy"] != "hello" or not o:
            continue
        rows.append(f"| {c['backend']} | {c['conns']} | {o['rps']:,.0f} → {c['rps']:,.0f} "
                    f"({ratio(c['rps'], o['rps'])}×) | {o['cpu_us_per_req']:.1f} → "
                    f"{c['cpu_us_per_req']:.1f} µs | {us(o['p99_us'])} → {us(c['p99_us'])} |")
    old_p = {p["proxy"]: p for p in old.get("profiles", [])}
    for p in result.get("profiles", []):
        if p["proxy"] == "hello" and "hello" in old_p:
            rows.append(f"\nhello instructions/request: {old_p['hello']['per_request']:,.0f} → "
                        f"{p['per_request']:,.0f}")
    return "## Against the baseline " + baseline_path + "\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.pool:
        try:
            print("## hello against HAProxy, pairs pooled over runs\n\n" + pooled_table(args.pool))
        except (BenchError, OSError, ValueError, KeyError) as err:
            log(f"cannot pool: {err}")
            return 1
        return 0
    out_dir = Path(args.out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = (out_dir / f"{'smoke' if args.smoke else 'run'}-{stamp}").resolve()
    work = run_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    children = Children(work)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # A shell starts background jobs with SIGINT ignored; Ctrl-C should still stop the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    try:
        result = run(args, children, work, run_dir)
    except BenchError as err:
        log(f"failed: {err}")
        log(f"logs in {work}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        children.stop_all()
    text = report(result, args)
    if args.baseline:
        text += "\n" + baseline_report(result, args.baseline)
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    (run_dir / "report.md").write_text(text)
    latest = out_dir / ("latest-smoke" if args.smoke else "latest")
    latest.unlink(missing_ok=True)
    latest.symlink_to(run_dir.name)
    print(text)
    log(f"results: {run_dir}/report.md and results.json (also {latest}); "
        f"callgrind profiles in {run_dir}; took {time.monotonic() - started:.0f} s")
    if args.smoke:
        try:
            if "main" in result["tables"]:
                check_table(result["tables"]["main"], 14, 3)
            else:
                check_table(result["tables"]["endpoints"], 10, 2)
            for c in result.get("cells", []) + result.get("endpoints", []):
                if c["status_errors"] > c["requests"] / 100:
                    raise BenchError(f"{c['proxy']} answered {c['status_errors']} of "
                                     f"{c['requests']} requests with an error status")
            for p in result.get("profiles", []):
                if p["per_request"] <= 0:
                    raise BenchError(f"no instructions counted for {p['proxy']}")
            rows = result.get("cells", []) + result.get("endpoints", [])
            if any(c["proxy"] == "haproxy" for c in rows):
                check_table(pooled_table([str(run_dir / "results.json")]), 8, 4)
        except (BenchError, ValueError) as err:
            log(f"smoke check failed: {err}")
            return 1
        log("smoke check passed: every row has numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
