"""End to end: the compose demo in API mode (docker-compose.cloudmap.yml). moto's server stands in
for Cloud Map on the host, scripts/cloudmap-registrar registers and deregisters the `name`
replicas as ECS does, and hello finds them with DISCOVERY=cloudmap.

The stack runs under a project name and host port of its own (CLOUDMAP_PROJECT_NAME,
CLOUDMAP_HELLO_PORT, set by scripts/compose-e2e, which builds its images from the same binaries)
and is torn down, with moto and the registrar, after this module. The tests share it, in order.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass

import pytest
import requests

from cloudmap import MOTO_VENV, Moto, Registrar, docker_host_address, monotonic_of
from stack import (HEALTHY_DEADLINE, MEASUREMENTS, REQUEST_TIMEOUT, ROOT, Stack, Traffic,
                   compose_command, poll, run)

# The registrar's reconciliation interval, here.
REGISTRAR_INTERVAL = 0.5
# hello's CLOUDMAP_POLL_INTERVAL (its default, 1 s) plus its jitter (up to a fifth).
POLL_BOUND = 1.2
# "Within a poll plus a few seconds": the few seconds.
SLACK = 3.0


@dataclass
class CloudMapDemo:
    stack: Stack
    registrar: Registrar


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    project = os.environ.get("CLOUDMAP_PROJECT_NAME")
    port = os.environ.get("CLOUDMAP_HELLO_PORT")
    if not project or not port:
        pytest.fail("CLOUDMAP_PROJECT_NAME and CLOUDMAP_HELLO_PORT must be set: run scripts/compose-e2e")
    logs = tmp_path_factory.mktemp("cloudmap")
    compose = [*compose_command(), "-p", project, "-f", str(ROOT / "docker-compose.yml"),
               "-f", str(ROOT / "docker-compose.cloudmap.yml")]
    moto = registrar = stack = None
    try:
        started = time.monotonic()
        moto = Moto(docker_host_address(), logs / "moto.log")
        moto.wait_ready()
        MEASUREMENTS["API mode: moto's server answering, after its start"] = f"{time.monotonic() - started:.1f} s"
        registrar = Registrar(project, moto.url, REGISTRAR_INTERVAL)
        registrar.wait_for("started")
        stack = Stack(compose, project, int(port),
                      env={**os.environ, "HELLO_PORT": port, "MOTO_PORT": str(moto.port)})
        started = time.monotonic()
        stack.compose_run("up", "-d", "--no-build")
        poll(stack.all_healthy, HEALTHY_DEADLINE, what="every container healthy")
        poll(lambda: stack.known_endpoints() == 3, HEALTHY_DEADLINE,
             what="hello to know the 3 registered replicas")
        MEASUREMENTS["API mode: from `up` to hello knowing every replica"] = f"{time.monotonic() - started:.1f} s"
        yield CloudMapDemo(stack, registrar)
    finally:
        # Each step runs whatever the one before did.
        try:
            if stack is not None:
                stack.down()
        finally:
            try:
                if registrar is not None:
                    registrar.stop()
            finally:
                if moto is not None:
                    moto.stop()


def describe(failures) -> str:
    return "\n".join(f"  status={a.status} error={a.error}" for a in failures[:10])


def addresses_known(stack: Stack) -> set[str]:
    """Every endpoint hello holds, whatever its state."""
    return {e["address"] for e in stack.debug_endpoints().get("endpoints", [])}


def test_hello_finds_every_registered_replica_through_the_api(demo: CloudMapDemo):
    replicas = demo.stack.ensure_name_replicas(3)
    registered = demo.registrar.registered_addresses()
    assert replicas <= set(registered), f"replicas {replicas}, registered {registered}"
    known = addresses_known(demo.stack)
    assert known == {f"{registered[r]}:3000" for r in replicas}

    session = requests.Session()
    answers = []
    for _ in range(90):
        response = session.get(demo.stack.url, headers={"Accept": "application/json"},
                               timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        answers.append(response.json()["name_instance"])
    assert set(Counter(answers)) == replicas, f"answers from {Counter(answers)}"

    # The zones come from the AVAILABILITY_ZONE attributes: DNS has none.
    zones = {e.get("zone") for e in demo.stack.debug_endpoints()["endpoints"]}
    assert zones == {"demo-a", "demo-b", "demo-c"}
    # Through the API, not DNS: hello counts its successful calls.
    metrics = requests.get(demo.stack.url + "metrics", timeout=REQUEST_TIMEOUT).text
    calls = re.search(r'^hello_cloudmap_calls_total\{call="discover_instances",result="ok"\} (\d+)',
                      metrics, re.MULTILINE)
    assert calls and int(calls.group(1)) > 0, metrics


def test_a_deregistered_replica_gets_no_traffic_after_one_poll(demo: CloudMapDemo):
    stack, registrar = demo.stack, demo.registrar
    replicas = stack.ensure_name_replicas(3)
    victim = sorted(replicas)[0]
    address = f"{registrar.registered_addresses()[victim]}:3000"

    with Traffic(stack.url) as traffic:
        poll(lambda: set(traffic.instances_since(0)) >= replicas, 30, what="answers from every replica")
        # As ECS stops a task: SIGTERM, the registrar deregisters it, name drains (4 s) and
        # keeps answering meanwhile.
        signalled = time.time()
        stack.run_docker("kill", "--signal", "TERM", victim)
        deregistered = monotonic_of(registrar.wait_for("deregistered", victim, signalled, 10)["time"])
        poll(lambda: address not in addresses_known(stack), POLL_BOUND + SLACK,
             what="hello to drop the deregistered replica")
        dropped = time.monotonic() - deregistered
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 30, 30, what="30 more answers")

    # It drains, then exits 0 (the next tests count on it being gone).
    poll(lambda: not stack.inspect(victim)["State"]["Running"], 15, what="the replica to exit")
    assert stack.inspect(victim)["State"]["ExitCode"] == 0

    last_sent = max(a.sent for a in traffic.snapshot() if a.name_instance == victim)
    assert not traffic.failures(), describe(traffic.failures())
    assert victim not in traffic.instances_since(settled)
    assert last_sent - deregistered < POLL_BOUND + SLACK
    MEASUREMENTS["API mode: deregistration -> last request sent to the replica"] = \
        f"{max(0.0, last_sent - deregistered):.2f} s"
    MEASUREMENTS["API mode: deregistration -> hello dropped the replica"] = f"{dropped:.2f} s"


def test_scaling_name_down_to_one_deregisters_and_loses_no_request(demo: CloudMapDemo):
    stack, registrar = demo.stack, demo.registrar
    before = stack.ensure_name_replicas(3)

    with Traffic(stack.url) as traffic:
        poll(lambda: len(traffic.snapshot()) >= 20, 30, what="traffic to flow")
        started, started_wall = time.monotonic(), time.time()
        stack.scale_name(1)  # returns once the removed replicas have drained and exited
        scaled = time.monotonic() - started
        (remaining,) = stack.instances()
        poll(lambda: stack.known_endpoints() == 1 and len(addresses_known(stack)) == 1,
             POLL_BOUND + SLACK, what="hello to drop the removed replicas")
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 30, 30, what="30 more answers")

    removed = before - {remaining}
    assert len(removed) == 2, f"before {before}, remaining {remaining}"
    # Both were deregistered when Compose stopped them; the later deregistration counts.
    deregistered = max(monotonic_of(registrar.wait_for("deregistered", r, started_wall, 1)["time"])
                       for r in removed)
    last_sent = max((a.sent for a in traffic.snapshot() if a.name_instance in removed),
                    default=started)
    assert not traffic.failures(), describe(traffic.failures())
    assert set(traffic.instances_since(settled)) == {remaining}
    assert last_sent - deregistered < POLL_BOUND + SLACK
    MEASUREMENTS["API mode, scale 3 -> 1: compose took (drain included)"] = f"{scaled:.1f} s"
    MEASUREMENTS["API mode, scale 3 -> 1: deregistration -> last request sent to a removed replica"] = \
        f"{max(0.0, last_sent - deregistered):.2f} s"


def test_killing_a_replica_deregisters_it_and_loses_no_request(demo: CloudMapDemo):
    stack, registrar = demo.stack, demo.registrar
    replicas = stack.ensure_name_replicas(3)
    registered = registrar.registered_addresses()
    victim = sorted(replicas)[-1]
    address = f"{registered[victim]}:3000"

    with Traffic(stack.url) as traffic:
        poll(lambda: set(traffic.instances_since(0)) >= replicas, 30, what="answers from every replica")
        kill_sent, killed_wall = time.monotonic(), time.time()
        stack.run_docker("kill", victim)  # SIGKILL: no drain, in-flight requests fail over
        killed = time.monotonic()  # dead by now: the command returns after the signal
        deregistered = monotonic_of(registrar.wait_for("deregistered", victim, killed_wall, 10)["time"])
        poll(lambda: address not in addresses_known(stack), POLL_BOUND + SLACK,
             what="hello to drop the killed replica")
        dropped = time.monotonic()
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 30, 30, what="30 more answers")

    assert not traffic.failures(), describe(traffic.failures())
    assert victim not in traffic.instances_since(killed)
    MEASUREMENTS["API mode, docker kill: kill -> deregistration"] = f"{deregistered - kill_sent:.2f} s"
    MEASUREMENTS["API mode, docker kill: deregistration -> hello dropped it"] = f"{dropped - deregistered:.2f} s"


def test_the_registrar_leaves_out_a_container_removed_while_it_looks(demo: CloudMapDemo):
    """`--scale` removes containers between the registrar's `docker ps` and its `docker
    inspect`, and docker then exits 1 for the whole list: the registrar keeps the containers
    still there instead of exiting."""
    present = demo.stack.container_ids("name")[0]
    gone = "0" * 64
    code = (
        "import importlib.machinery, importlib.util, json, sys\n"
        "loader = importlib.machinery.SourceFileLoader('registrar', sys.argv[1])\n"
        "spec = importlib.util.spec_from_loader('registrar', loader)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "loader.exec_module(module)\n"
        "print(json.dumps([c['Id'] for c in module.inspect_containers(sys.argv[2:])]))\n"
    )
    found = json.loads(run([str(MOTO_VENV / "bin" / "python"), "-c", code,
                            str(ROOT / "scripts" / "cloudmap-registrar"), present, gone]))
    assert found == [present]
