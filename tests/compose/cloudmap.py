"""API mode's moving parts outside Compose: moto's server standing in for Cloud Map on the host,
and scripts/cloudmap-registrar doing what ECS does. Both run from .venv-moto/ (installed by
`scripts/cloudmap-moto --setup`), as the demo's instructions run them, and are stopped
whatever happens."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import requests

from stack import ROOT, poll, run

MOTO_VENV = Path(os.environ.get("MOTO_VENV", ROOT / ".venv-moto"))
START_DEADLINE = 30


def interface_ipv4(name: str) -> str:
    """The IPv4 address of a network interface (SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])


def docker_host_address() -> str:
    """The address `host-gateway` stands for: the default bridge's gateway on this host (for
    example 172.17.0.1). Containers on any bridge network reach the host there; it is not an
    address of the host's outside interfaces."""
    bridge = json.loads(run(["docker", "network", "inspect", "bridge"]))[0]
    for config in bridge.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return config["Gateway"]
    return interface_ipv4(bridge["Options"].get("com.docker.network.bridge.name", "docker0"))


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, then SIGKILL if it is still there after 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Moto:
    """moto's server on `address`, on a free port."""

    def __init__(self, address: str, log: Path):
        self.port = free_port(address)
        self.url = f"http://{address}:{self.port}"
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [str(MOTO_VENV / "bin" / "moto_server"), "-H", address, "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, f"moto exited {self.process.returncode}"
            try:
                return requests.get(self.url + "/moto-api/", timeout=2).ok
            except requests.RequestException:
                return False
        poll(answers, START_DEADLINE, what=f"moto to answer on {self.url}")

    def stop(self) -> None:
        stop(self.process)
        self._log.close()


class Registrar:
    """scripts/cloudmap-registrar for one compose project; its JSON lines kept as events."""

    def __init__(self, project: str, endpoint: str, interval: float):
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [str(MOTO_VENV / "bin" / "python"), str(ROOT / "scripts" / "cloudmap-registrar"),
             "--project", project, "--endpoint", endpoint, "--interval", str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line.rstrip()}
            with self._lock:
                self.events.append(event)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def output(self) -> str:
        return "\n".join(json.dumps(e) for e in self.snapshot()[-30:])

    def wait_for(self, event: str, instance: str | None = None, after: float = 0.0,
                 timeout: float = START_DEADLINE) -> dict:
        """The first event of this kind (for this instance) logged at or after the wall-clock
        time `after`, waiting up to `timeout` seconds."""
        def found():
            assert self.process.poll() is None, f"the registrar exited:\n{self.output()}"
            return next((e for e in self.snapshot() if e.get("event") == event
                         and e.get("time", 0.0) >= after
                         and (instance is None or e.get("instance") == instance)), None)
        return poll(found, timeout, interval=0.05, what=f"the registrar's {event!r} {instance or ''}")

    def registered_addresses(self) -> dict[str, str]:
        """Instance id to the address it was registered with."""
        return {e["instance"]: e["address"] for e in self.snapshot() if e.get("event") == "registered"}

    def stop(self) -> None:
        stop(self.process)


def monotonic_of(wall: float) -> float:
    """A time.time() value (the registrar's clock) on time.monotonic()'s scale (the traffic's)."""
    return wall - time.time() + time.monotonic()
