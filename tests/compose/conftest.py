"""The session's stack: the real docker-compose.yml, brought up once under a project name and
host port of its own, and always torn down (containers, networks, volumes, the images it built).

Run through `scripts/compose-e2e`, which builds the binaries and images first. Settings come
from the environment:

    COMPOSE_CMD           how to call Compose: "docker compose" or "docker-compose"
    COMPOSE_PROJECT_NAME  the project to create and remove
    HELLO_PORT            the host port hello is published on
"""

from __future__ import annotations

import os
import time

import pytest

from stack import HEALTHY_DEADLINE, MEASUREMENTS, Stack, compose_command, poll


@pytest.fixture(scope="session")
def stack():
    project = os.environ.get("COMPOSE_PROJECT_NAME")
    port = os.environ.get("HELLO_PORT")
    if not project or not port:
        pytest.fail("COMPOSE_PROJECT_NAME and HELLO_PORT must be set: run scripts/compose-e2e")
    stack = Stack(compose_command(), project, int(port))
    try:
        started = time.monotonic()
        stack.compose_run("up", "-d", "--no-build")
        poll(stack.all_healthy, HEALTHY_DEADLINE, what="every container healthy")
        MEASUREMENTS["from `up` to every container healthy"] = f"{time.monotonic() - started:.1f} s"
        yield stack
    finally:
        stack.down()


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("compose demo measurements")
        for what, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{what}: {value}")
