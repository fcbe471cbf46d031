#!/usr/bin/env python3
"""Figures for hello under hostile clients and broken upstreams, on the release binaries.

Run by hand after `cargo build --release --locked`; it reports, it asserts nothing:

    python3 benches/hostile.py [--target-dir target] [--items 1,2,7]

Everything listens on 127.0.0.x; dnsmasq (Debian) answers for name.internal where records
are needed. Every loop is bounded in count and time, and every process started is killed on
exit.
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCESSES: list[subprocess.Popen] = []


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    PROCESSES.append(process)
    return process


def wait_port(host: str, port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {host}:{port}")


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started
    finally:
        connection.close()


class Hello:
    def __init__(self, binary: Path, env: dict[str, str]):
        self.port = free_port()
        self.process = start([str(binary)], {"HOST": "127.0.0.1", "PORT": str(self.port),
                                             "INSTANCE_ID": "h1", "RUST_LOG": "off", **env})
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Dns:
    """dnsmasq answering name.internal with the given addresses, TTL 1 s."""

    def __init__(self, addresses: list[str]):
        self.port = free_port()
        records = [f"--host-record=name.internal,{address}" for address in addresses]
        self.process = start(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                              "--listen-address=127.0.0.1", "--bind-interfaces",
                              f"--port={self.port}", "--local-ttl=1", *records], {})
        time.sleep(0.3)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


def names(binary: Path, addresses: list[str], port: int) -> list[subprocess.Popen]:
    started = [start([str(binary)], {"HOST": address, "PORT": str(port), "INSTANCE_ID": f"n{i}",
                                     "RUST_LOG": "off"})
               for i, address in enumerate(addresses, 1)]
    for address in addresses:
        wait_port(address, port)
    return started


def accept_until(listener: socket.socket, stop: threading.Event, serve) -> None:
    """Serves each accepted connection on a thread of its own until `stop` is set."""
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(connection,), daemon=True).start()
    listener.close()


def endless_server(host: str, port: int, stop: threading.Event) -> None:
    """Answers each request 200 with a chunked body that never ends (bounded at 4 GiB)."""
    listener = socket.create_server((host, port))
    listener.settimeout(0.2)
    chunk = b"2000\r\n" + b"x" * 8192 + b"\r\n"

    def serve(connection: socket.socket) -> None:
        try:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(1 << 19):
                if stop.is_set():
                    break
                connection.sendall(chunk)
        except OSError:
            pass
        finally:
            connection.close()

    accept_until(listener, stop, serve)


def item1_endless(hello_bin: Path) -> None:
    port = free_port()
    stop = threading.Event()
    threading.Thread(target=endless_server, args=("127.0.0.1", port, stop), daemon=True).start()
    wait_port("127.0.0.1", port)
    hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://127.0.0.1:{port}"})
    statuses = [get(hello.port)[0] for _ in range(50)]
    peak = rss_peak_kib(hello.process.pid)
    stop.set()
    hello.stop()
    print(f"1. endless body: 50 requests -> {statuses.count(503)} x 503; hello peak RSS {peak / 1024:.1f} MiB")


def item2_slow_clients(hello_bin: Path) -> None:
    hello = Hello(hello_bin, {"NAME_SERVICE_URL": "http://127.0.0.1:9"})
    head = b"GET / HTTP/1.1\r\nHost: hello\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    clients = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", hello.port))
        s.setblocking(False)
        clients.append(s)
    started = time.monotonic()
    open_clients = set(range(len(clients)))
    sent = 0
    while open_clients and time.monotonic() - started < 60:
        for i in list(open_clients):
            try:
                data = clients[i].recv(64)
                if data == b"":
                    open_clients.discard(i)
                    continue
            except BlockingIOError:
                pass
            except OSError:
                open_clients.discard(i)
                continue
            try:
                clients[i].send(head[sent % len(head):][:1])
            except OSError:
                open_clients.discard(i)
        sent += 1
        time.sleep(1.0)
    closed_after = time.monotonic() - started
    print(f"2. 500 slow clients (1 byte/s): {500 - len(open_clients)} closed by hello within {closed_after:.1f} s")
    for s in clients:
        s.close()
    # SIGTERM while 500 connections hold a half-sent head.
    held = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", hello.port))
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        held.append(s)
    time.sleep(0.3)
    signalled = time.monotonic()
    hello.process.send_signal(signal.SIGTERM)
    try:
        code = hello.process.wait(timeout=60)
        print(f"   SIGTERM with 500 slow connections open: exit {code} after {time.monotonic() - signalled:.2f} s")
    except subprocess.TimeoutExpired:
        print("   SIGTERM with 500 slow connections open: still running after 60 s")
        hello.stop()
    for s in held:
        s.close()


def item3_loop(hello_bin: Path) -> None:
    port = free_port()
    hello = Hello.__new__(Hello)
    hello.port = port
    hello.process = start([str(hello_bin)], {"HOST": "127.0.0.1", "PORT": str(port), "RUST_LOG": "off",
                                             "NAME_SERVICE_URL": f"http://127.0.0.1:{port}"})
    wait_port("127.0.0.1", port)
    peak = 0
    statuses = []
    for _ in range(9):
        statuses.append(get(port)[0])
        peak = max(peak, fds(hello.process.pid))
    print(f"3. record pointing at hello: 9 requests -> statuses {sorted(set(statuses))}, peak {peak} file descriptors")
    hello.stop()


def item4_dead_records(hello_bin: Path, name_bin: Path) -> None:
    port = free_port("127.0.0.11")
    live = [f"127.0.0.{11 + i}" for i in range(3)]
    dead = [f"127.0.0.{40 + i}" for i in range(17)]
    instances = names(name_bin, live, port)
    dns = Dns(live + dead)
    hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server})
    time.sleep(5)
    statuses = [get(hello.port)[0] for _ in range(1000)]
    print(f"4. 17 of 20 records dead, after 5 s: {statuses.count(200) / 10:.1f}% of 1000 requests succeeded")
    hello.stop()
    # Total outage, then one instance back.
    hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server})
    for _ in range(20):
        get(hello.port)
    for process in instances:
        process.kill()
        process.wait()
    outage_end = time.monotonic() + 15
    while time.monotonic() < outage_end:
        get(hello.port)
        time.sleep(0.05)
    back = names(name_bin, live[1:2], port)
    answered = time.monotonic()
    first = steady = None
    streak = misses = 0
    while time.monotonic() - answered < 30 and streak < 50:
        ok = get(hello.port)[0] == 200
        if ok and first is None:
            first = time.monotonic() - answered
        streak = streak + 1 if ok else 0
        misses += not ok
        if streak == 1:
            steady = time.monotonic() - answered
    print(f"   after 15 s of total outage (20 records, 1 instance back): first 200 after {first:.2f} s, "
          f"every request succeeding from {steady:.2f} s ({misses} failed before)"
          if first is not None else "   no success within 30 s after an instance came back")
    hello.stop()
    for process in back:
        process.kill()


def status_server(host: str, port: int, status: bytes, stop: threading.Event,
                  extra: bytes = b"", hang: bool = False) -> None:
    """Answers `/healthz` 200 and every other request `status` (or never, when `hang`)."""
    listener = socket.create_server((host, port))
    listener.settimeout(0.2)

    def serve(connection: socket.socket) -> None:
        try:
            while not stop.is_set():
                request = connection.recv(4096)
                if not request or hang:
                    if hang:
                        stop.wait(30)
                    return
                if request.startswith(b"GET /healthz"):
                    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                else:
                    connection.sendall(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n" + extra + b"\r\n")
        except OSError:
            pass
        finally:
            connection.close()

    accept_until(listener, stop, serve)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def item5_and_6(hello_bin: Path, name_bin: Path) -> None:
    for label, status, extra, hang in [("404", b"404 Not Found", b"", False),
                                       ("429", b"429 Too Many Requests", b"retry-after: 1\r\n", False),
                                       ("black hole", b"", b"", True)]:
        port = free_port("127.0.0.11")
        live = [f"127.0.0.{11 + i}" for i in range(2)]
        instances = names(name_bin, live, port)
        stop = threading.Event()
        threading.Thread(target=status_server, args=("127.0.0.13", port, status, stop, extra, hang),
                         daemon=True).start()
        wait_port("127.0.0.13", port)
        dns = Dns(live + ["127.0.0.13"])
        hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server})
        results = [get(hello.port) for _ in range(2000)]
        ok = sum(1 for code, _ in results if code == 200)
        latencies = [took * 1000 for _, took in results]
        print(f"{'5' if label != 'black hole' else '6'}. one {label} instance of 3: {ok} of 2000 succeeded; "
              f"p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
              f"max {max(latencies):.1f} ms")
        stop.set()
        hello.stop()
        dns.process.kill()
        for process in instances:
            process.kill()
    # The healthy baseline in the same run.
    port = free_port("127.0.0.11")
    live = [f"127.0.0.{11 + i}" for i in range(3)]
    instances = names(name_bin, live, port)
    dns = Dns(live)
    hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server})
    latencies = [get(hello.port)[1] * 1000 for _ in range(2000)]
    print(f"   baseline, 3 healthy instances: p50 {percentile(latencies, 0.5):.2f} ms, "
          f"p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.1f} ms")
    hello.stop()
    for process in instances:
        process.kill()


def read_answer(connection: socket.socket) -> int:
    """Reads one answer with a content-length; returns its status, 0 when the connection ends
    before the answer does."""
    received = b""
    while True:
        end = received.find(b"\r\n\r\n")
        if end >= 0:
            head = received[:end].decode("latin-1").lower().split("\r\n")
            length = next((int(line.split(":", 1)[1]) for line in head
                           if line.startswith("content-length:")), 0)
            if len(received) >= end + 4 + length:
                return int(head[0].split()[1])
        chunk = connection.recv(4096)
        if not chunk:
            return 0
        received += chunk


def ask(connection: socket.socket, path: str) -> int:
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n".encode())
    return read_answer(connection)


def flood(port: int, count: int, idle: bool, limit: float = 60.0) -> tuple[list[socket.socket], int]:
    """Opens up to `count` connections within `limit` seconds that send nothing, or, when
    `idle`, that each ask for /healthz once and then sit idle; returns them (hello may have
    closed some since), and how many took a second or more to connect (a SYN dropped while the listen queue was full,
    sent again after the kernel's first retransmission timeout)."""
    held = []
    retried = 0
    deadline = time.monotonic() + limit
    while len(held) < count and time.monotonic() < deadline:
        try:
            connecting = time.monotonic()
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            retried += time.monotonic() - connecting >= 0.9
            connection.settimeout(10)
            if idle and ask(connection, "/healthz") != 200:
                connection.close()
                continue
            held.append(connection)
        except OSError:
            time.sleep(0.01)
    return held, retried


def real_client(port: int, requests: int = 60, every: float = 0.05) -> list[tuple[int, float]]:
    """`requests` requests for `GET /`, one every `every` seconds (20 a second), each on a
    connection of its own that stays open after its answer, as a load balancer opening
    connections in a burst does. Returns each one's status (0 when it failed) and time."""
    results: list[tuple[int, float]] = [(0, 30.0)] * requests
    kept: list[socket.socket] = []

    def one(i: int) -> None:
        asked = time.monotonic()
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.settimeout(10)
            kept.append(connection)
            status = ask(connection, "/")
        except OSError:
            status = 0
        results[i] = (status, time.monotonic() - asked)

    threads = []
    started = time.monotonic()
    for i in range(requests):
        time.sleep(max(0.0, started + i * every - time.monotonic()))
        thread = threading.Thread(target=one, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=30)
    for connection in kept:
        connection.close()
    return results


def metric(port: int, name: str) -> int:
    """The value of one series in hello's /metrics, -1 when it cannot be read."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.settimeout(10)
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
            text = b""
            while chunk := connection.recv(65536):
                text += chunk
    except OSError:
        return -1
    for line in text.decode("latin-1").splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return -1


def item7_flood(hello_bin: Path, name_bin: Path) -> None:
    port = free_port("127.0.0.11")
    live = [f"127.0.0.{11 + i}" for i in range(3)]
    instances = names(name_bin, live, port)
    dns = Dns(live)
    print("7. connection flood past MAX_CONNECTIONS (1024, the default), 1100 connections held while "
          "a real client sends 60 requests at 20/s, each on a new connection:")

    def served(results: list[tuple[int, float]]) -> str:
        latencies = [took * 1000 for _, took in results]
        ok = sum(1 for code, _ in results if code == 200)
        return (f"{ok} of {len(results)} requests answered 200; p50 {percentile(latencies, 0.5):.2f} ms, "
                f"p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.1f} ms")

    hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server})
    for _ in range(20):
        get(hello.port)
    print(f"   no flood, the same client: {served(real_client(hello.port))}")
    hello.stop()
    for label, idle in [("silent", False), ("idle keep-alive", True)]:
        # The header timeout would close silent connections after 5 s: a long one keeps the
        # table full for the whole run, so that only shedding makes room.
        hello = Hello(hello_bin, {"NAME_SERVICE_URL": f"http://name.internal:{port}", "DNS_SERVER": dns.server,
                                  "HEADER_READ_TIMEOUT": "60s"})
        for _ in range(20):
            get(hello.port)
        started = time.monotonic()
        held, retried = flood(hello.port, 1100, idle)
        opened_in = time.monotonic() - started
        peak_fds = fds(hello.process.pid)
        results = real_client(hello.port)
        peak_fds = max(peak_fds, fds(hello.process.pid))
        state = "idle" if idle else "silent"
        shed = metric(hello.port, f'hello_connections_shed_total{{state="{state}"}}')
        print(f"   {len(held)} {label} connections opened in {opened_in:.1f} s ({retried} connected only after "
              f"a SYN retry): {served(results)}; {shed} {state} connections shed; hello peak {peak_fds} "
              f"file descriptors")
        for connection in held:
            connection.close()
        hello.stop()
    dns.process.kill()
    for process in instances:
        process.kill()


def raise_open_files(needed: int = 8192) -> None:
    """Raises the soft limit of open files, for this process and the processes it starts, to
    `needed` (within the hard limit): the flood holds 1,100 connections at each end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-dir", default=str(ROOT / "target"))
    parser.add_argument("--items", default="1,2,3,4,5,6,7",
                        help="the numbered cases to run, comma-separated (5 and 6 run together)")
    args = parser.parse_args()
    wanted = {item.strip() for item in args.items.split(",")}
    release = Path(args.target_dir) / "release"
    hello_bin, name_bin = release / "hello", release / "name"
    for binary in (hello_bin, name_bin):
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: cargo build --release --locked first")
    if not shutil.which("dnsmasq"):
        raise SystemExit("dnsmasq is missing: apt-get install dnsmasq")
    raise_open_files()
    cases = [({"1"}, lambda: item1_endless(hello_bin)),
             ({"2"}, lambda: item2_slow_clients(hello_bin)),
             ({"3"}, lambda: item3_loop(hello_bin)),
             ({"4"}, lambda: item4_dead_records(hello_bin, name_bin)),
             ({"5", "6"}, lambda: item5_and_6(hello_bin, name_bin)),
             ({"7"}, lambda: item7_flood(hello_bin, name_bin))]
    try:
        for numbers, run in cases:
            if numbers & wanted:
                run()
    finally:
        for process in PROCESSES:
            if process.poll() is None:
                process.kill()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
