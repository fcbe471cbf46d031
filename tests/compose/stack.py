"""The demo stack as the tests see it: the compose project, the containers Docker runs for it,
and traffic to hello through the port it publishes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]

# Seconds Compose and Docker commands may take; none of them should come close.
COMMAND_TIMEOUT = 120
# How long the stack may take from `up` to every container healthy.
HEALTHY_DEADLINE = 90
# Each request's own deadline; hello answers (or fails with 503) within its REQUEST_TIMEOUT.
REQUEST_TIMEOUT = 10

# Measurements reported at the end of the run (see pytest_terminal_summary).
MEASUREMENTS: dict[str, str] = {}


def run(args: list[str], timeout: float = COMMAND_TIMEOUT, env: dict[str, str] | None = None) -> str:
    """Runs a command, returns its stdout, fails with its output when it fails."""
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=env)
    if result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


def poll(condition, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Calls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Answer:
    """One request to hello, as the client saw it."""

    sent: float  # time.monotonic() when sent
    received: float
    status: int | None  # None: no HTTP answer at all
    name_instance: str | None
    error: str | None


@dataclass
class Traffic:
    """Requests to hello from a few threads until stopped, bounded in count and in time."""

    url: str
    workers: int = 2
    max_requests: int = 4000
    max_seconds: float = 90.0
    pause: float = 0.02
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]

    def __enter__(self) -> Traffic:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)

    def _work(self) -> None:
        session = requests.Session()
        headers = {"Accept": "application/json"}
        while not self._stop.is_set():
            with self._lock:
                if len(self.answers) >= self.max_requests:
                    return
            if time.monotonic() - self._started > self.max_seconds:
                return
            sent = time.monotonic()
            try:
                response = session.get(self.url, headers=headers, timeout=REQUEST_TIMEOUT)
                instance = response.json().get("name_instance") if response.status_code == 200 else None
                answer = Answer(sent, time.monotonic(), response.status_code, instance,
                                None if response.status_code == 200 else response.text.strip())
            except (requests.RequestException, ValueError) as err:
                answer = Answer(sent, time.monotonic(), None, None, repr(err))
            with self._lock:
                self.answers.append(answer)
            time.sleep(self.pause)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def failures(self) -> list[Answer]:
        return [a for a in self.snapshot() if a.status != 200]

    def instances_since(self, since: float) -> list[str | None]:
        """The name instances that answered requests sent at or after `since`."""
        return [a.name_instance for a in self.snapshot() if a.sent >= since]


class Stack:
    """The compose project under test."""

    def __init__(self, compose: list[str], project: str, port: int,
                 env: dict[str, str] | None = None):
        """`env`: the environment of Compose commands (default: this process's)."""
        self.compose = compose
        self.project = project
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}/"

    def compose_run(self, *args: str) -> str:
        return run([*self.compose, *args], env=self.env)

    def run_docker(self, *args: str) -> str:
        return run(["docker", *args])

    def container_ids(self, service: str, all_states: bool = False) -> list[str]:
        """Full container ids of a service (running ones unless `all_states`)."""
        args = ["docker", "ps", "-q", "--no-trunc",
                "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            args.append("-a")
        return run(args).split()

    def instances(self, service: str = "name") -> set[str]:
        """Instance ids of the running replicas: the container's hostname, its short id."""
        return {cid[:12] for cid in self.container_ids(service)}

    def inspect(self, container: str) -> dict:
        return json.loads(run(["docker", "inspect", container]))[0]

    def all_healthy(self) -> bool:
        ids = self.container_ids("name") + self.container_ids("hello")
        if not ids:
            return False
        for cid in ids:
            health = self.inspect(cid)["State"].get("Health", {}).get("Status")
            if health != "healthy":
                return False
        return True

    def debug_endpoints(self) -> dict:
        """hello's /debug/endpoints; empty when it does not answer."""
        try:
            return requests.get(self.url + "debug/endpoints", timeout=REQUEST_TIMEOUT).json()
        except (requests.RequestException, ValueError):
            return {}

    def known_endpoints(self) -> int:
        """How many healthy endpoints hello knows, from its /debug/endpoints."""
        body = self.debug_endpoints()
        return sum(1 for e in body.get("endpoints", []) if e.get("state") == "healthy")

    def scale_name(self, replicas: int) -> None:
        """Scales `name` and returns once Compose has created or removed the replicas."""
        self.compose_run("up", "-d", "--no-build", "--no-deps", "--no-recreate",
                         "--scale", f"name={replicas}", "name")

    def ensure_name_replicas(self, replicas: int) -> set[str]:
        """Scales `name` to `replicas`, waits until every replica is healthy and hello knows
        them all; returns their instance ids."""
        self.scale_name(replicas)
        poll(lambda: len(self.instances()) == replicas and self.all_healthy(), HEALTHY_DEADLINE,
             what=f"{replicas} healthy name replicas")
        poll(lambda: self.known_endpoints() == replicas, HEALTHY_DEADLINE,
             what=f"hello to know {replicas} endpoints")
        return self.instances()

    def down(self) -> None:
        run([*self.compose, "down", "--volumes", "--remove-orphans", "--rmi", "local",
             "--timeout", "10"], env=self.env)


def compose_command() -> list[str]:
    """The Compose command scripts/compose-e2e found (scripts/compose-lib.sh finds it once)."""
    configured = os.environ.get("COMPOSE_CMD")
    if not configured:
        raise AssertionError("COMPOSE_CMD is not set: run scripts/compose-e2e")
    return shlex.split(configured)
