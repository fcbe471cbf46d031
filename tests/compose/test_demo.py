"""End to end: the docker-compose demo on the real Docker engine, through hello's published port.

The tests run in this order and share one stack; each first puts `name` at the replica count it
needs. The last one stops hello.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter

import requests

from stack import MEASUREMENTS, REQUEST_TIMEOUT, Stack, Traffic, poll

# "Within the TTL bound plus a few seconds": the few seconds.
SLACK = 5.0


def env_of(stack: Stack, container: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in stack.inspect(container)["Config"]["Env"])
    return {key: value for key, value in pairs}


def seconds(humantime: str) -> float:
    """The few humantime forms the compose file uses: "2s", "500ms"."""
    if humantime.endswith("ms"):
        return float(humantime[:-2]) / 1000
    if humantime.endswith("s"):
        return float(humantime[:-1])
    raise ValueError(f"unexpected duration {humantime!r}")


def ttl_bound(stack: Stack) -> float:
    """hello's DNS_MAX_TTL: the longest it may keep an answer from Docker's DNS."""
    hello = stack.container_ids("hello")[0]
    return seconds(env_of(stack, hello)["DNS_MAX_TTL"])


def describe(failures) -> str:
    return "\n".join(f"  status={a.status} error={a.error}" for a in failures[:10])


MAX_IMAGE_BYTES = 15 * 1000 * 1000


def test_images_are_small_non_root_and_check_their_own_health(stack: Stack):
    for service in ("name", "hello"):
        container = stack.inspect(stack.container_ids(service)[0])
        image = stack.inspect(container["Image"])

        MEASUREMENTS[f"image size of {service}"] = f"{image['Size'] / 1e6:.2f} MB"
        assert image["Size"] <= MAX_IMAGE_BYTES, f"{service}: {image['Size']} bytes"
        assert image["Config"]["User"] == "65532:65532"
        assert image["Config"]["Entrypoint"] == [f"/{service}"]
        assert image["Config"]["Healthcheck"]["Test"] == ["CMD", f"/{service}", "healthcheck"]
        assert container["HostConfig"]["ReadonlyRootfs"] is True


def test_answers_come_from_three_name_replicas(stack: Stack):
    replicas = stack.ensure_name_replicas(3)
    session = requests.Session()

    answers = []
    for _ in range(150):
        response = session.get(stack.url, headers={"Accept": "application/json"},
                               timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        answers.append(response.json()["name_instance"])

    counts = Counter(answers)
    assert set(counts) == replicas, f"answers from {dict(counts)}, replicas {replicas}"
    for instance, count in counts.items():
        assert count >= 0.15 * len(answers), f"{instance} answered {count} of 150: {dict(counts)}"


def test_scaling_name_down_to_one_loses_no_request(stack: Stack):
    stack.ensure_name_replicas(3)
    bound = ttl_bound(stack)

    with Traffic(stack.url) as traffic:
        poll(lambda: len(traffic.snapshot()) >= 20, 30, what="traffic to flow")
        stack.scale_name(1)
        removed_at = time.monotonic()
        (remaining,) = stack.instances()
        poll(lambda: stack.known_endpoints() == 1, bound + SLACK,
             what="hello to drop the removed replicas")
        followed = time.monotonic() - removed_at
        # From now on every answer must come from the one replica left.
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 50, 30, what="50 more answers")

    assert not traffic.failures(), describe(traffic.failures())
    assert set(traffic.instances_since(settled)) == {remaining}
    MEASUREMENTS["scale 3 -> 1: hello dropped the removed replicas, after compose removed them"] = f"{followed:.1f} s"


def test_scaling_name_back_to_three_sends_traffic_to_the_new_replicas(stack: Stack):
    before = stack.ensure_name_replicas(1)
    bound = ttl_bound(stack)

    with Traffic(stack.url) as traffic:
        poll(lambda: len(traffic.snapshot()) >= 20, 30, what="traffic to flow")
        stack.scale_name(3)
        started_at = time.monotonic()
        new = stack.instances() - before
        assert len(new) == 2, f"new replicas {new}"
        poll(lambda: new <= set(traffic.instances_since(started_at)), bound + SLACK,
             what=f"answers from the new replicas {new}")
        followed = time.monotonic() - started_at

    assert not traffic.failures(), describe(traffic.failures())
    MEASUREMENTS["scale 1 -> 3: both new replicas answered, after compose started them"] = f"{followed:.1f} s"


def test_killing_a_name_replica_loses_no_request(stack: Stack):
    replicas = stack.ensure_name_replicas(3)
    bound = ttl_bound(stack)
    victim = sorted(replicas)[0]

    with Traffic(stack.url) as traffic:
        # Every replica has answered, so hello holds pooled connections to the victim.
        poll(lambda: set(traffic.instances_since(0)) >= replicas, 30,
             what="answers from every replica")
        stack.run_docker("kill", victim)
        killed_at = time.monotonic()
        poll(lambda: stack.known_endpoints() == 2, bound + SLACK,
             what="hello to drop the killed replica")
        followed = time.monotonic() - killed_at
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 50, 30, what="50 more answers")

    assert not traffic.failures(), describe(traffic.failures())
    assert victim not in traffic.instances_since(settled)
    MEASUREMENTS["kill one replica: hello dropped it, after docker kill"] = f"{followed:.1f} s"


def test_a_draining_name_replica_keeps_answering_then_exits_zero(stack: Stack):
    replicas = stack.ensure_name_replicas(3)
    victim = sorted(replicas)[0]
    drain = float(env_of(stack, victim)["DRAIN_SECONDS"])
    assert drain > 0, "the compose file sets DRAIN_SECONDS for name"

    with Traffic(stack.url) as traffic:
        poll(lambda: set(traffic.instances_since(0)) >= replicas, 30,
             what="answers from every replica")
        stack.run_docker("kill", "--signal", "TERM", victim)
        term_at = time.monotonic()
        # Docker stops it with SIGKILL after the stop grace period (10 s); it must exit first.
        poll(lambda: not stack.inspect(victim)["State"]["Running"], drain + 10,
             what="the draining replica to exit")
        exited = time.monotonic() - term_at
        settled = time.monotonic()
        poll(lambda: len(traffic.instances_since(settled)) >= 20, 30, what="20 more answers")

    state = stack.inspect(victim)["State"]
    assert state["ExitCode"] == 0, state
    late_in_drain = [a for a in traffic.snapshot()
                     if a.name_instance == victim and a.sent >= term_at + drain / 2]
    assert late_in_drain, f"no answer from {victim} in the second half of its {drain:.0f} s drain"
    assert not traffic.failures(), describe(traffic.failures())
    MEASUREMENTS["SIGTERM to one name replica (DRAIN_SECONDS=%d): it exited 0 after" % drain] = f"{exited:.1f} s"


def call_example(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """Runs the upstream crate's `call` example once, in a container on the demo's network
    (Docker's DNS answers `name.internal` there), from hello's image with the example's
    static binary mounted in: the same discovery a service copying the crate would get."""
    binary = os.environ.get("CALL_EXAMPLE")
    assert binary and os.path.exists(binary), "CALL_EXAMPLE is not built: run scripts/compose-e2e"
    hello = stack.inspect(stack.container_ids("hello")[0])
    (network,) = hello["NetworkSettings"]["Networks"]
    return subprocess.run(
        ["docker", "run", "--rm", "--network", network, "--read-only", "--user", "65532:65532",
         "--cap-drop", "ALL", "-e", "RUST_LOG=warn",
         "-v", f"{binary}:/call:ro", "--entrypoint", "/call", hello["Image"], *args],
        capture_output=True, text=True, timeout=60, check=False)


def test_the_call_example_balances_over_every_name_replica(stack: Stack):
    replicas = stack.ensure_name_replicas(3)

    instances = Counter()
    for _ in range(30):
        run = call_example(stack, "-H", "Accept: application/json", "http://name.internal:3000/")
        assert run.returncode == 0, run.stderr
        instances[json.loads(run.stdout)["instance"]] += 1
        # One line on stderr: the status, the endpoint (ip:port) and the attempts.
        (line,) = run.stderr.strip().splitlines()
        assert "200" in line and ":3000" in line and "attempt" in line, line

    assert set(instances) == replicas, f"answers from {dict(instances)}, replicas {replicas}"
    refused = call_example(stack, "-X", "POST", "-d", "{}", "http://name.internal:3000/")
    assert refused.returncode == 1, refused.stderr
    assert "405" in refused.stderr, refused.stderr
    MEASUREMENTS["the call example, 30 runs"] = f"answers from {dict(instances)}"


def access_lines(stack: Stack, container: str, trace_id: str) -> list[dict]:
    """The JSON access lines in a container's log that carry `trace_id`."""
    logs = stack.run_docker("logs", container)
    lines = (json.loads(line) for line in logs.splitlines() if trace_id in line)
    return [line for line in lines if line.get("message") == "request"]


def test_one_request_is_found_by_its_trace_id_in_hello_and_name_logs(stack: Stack):
    stack.ensure_name_replicas(3)
    trace_id = os.urandom(16).hex()
    traceparent = f"00-{trace_id}-{os.urandom(8).hex()}-01"

    answer = requests.get(stack.url, headers={"traceparent": traceparent}, timeout=REQUEST_TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["traceresponse"].split("-")[1] == trace_id

    (hello,) = stack.container_ids("hello")
    (line,) = poll(lambda: access_lines(stack, hello, trace_id), 10, what="hello's access line")
    assert line["status"] == 200 and line["attempts"] == 1, line
    # The one name replica that answered logged the same trace, from hello's traceparent.
    found = {}
    def in_name_logs():
        found.update({cid[:12]: access_lines(stack, cid, trace_id) for cid in stack.container_ids("name")})
        return [lines for lines in found.values() if lines]
    (name_lines,) = poll(in_name_logs, 10, what="name's access line")
    assert len(name_lines) == 1 and name_lines[0]["status"] == 200, name_lines
    MEASUREMENTS["one request's trace id"] = f"{trace_id} in hello's log and in 1 of 3 name replicas' logs"


def test_both_services_write_emf_lines(stack: Stack):
    interval = seconds(env_of(stack, stack.container_ids("hello")[0])["METRICS_EMF_INTERVAL"])

    def emf_lines(service: str) -> list[dict]:
        logs = stack.run_docker("logs", stack.container_ids(service)[0])
        return [json.loads(line) for line in logs.splitlines() if '"_aws"' in line]

    for service in ("hello", "name"):
        lines = poll(lambda: emf_lines(service), interval + SLACK, what=f"an EMF line from {service}")
        directive = lines[-1]["_aws"]["CloudWatchMetrics"][0]
        assert directive["Dimensions"] == [["Service"]], directive
        assert lines[-1]["Service"] == service
        assert {"Name": "Requests", "Unit": "Count"} in directive["Metrics"], directive


def test_hello_exits_zero_promptly_on_sigterm(stack: Stack):
    (hello,) = stack.container_ids("hello")

    stack.run_docker("kill", "--signal", "TERM", hello)
    term_at = time.monotonic()
    # Within the stop grace period (10 s), after which Docker would SIGKILL it.
    poll(lambda: not stack.inspect(hello)["State"]["Running"], 10, what="hello to exit")
    exited = time.monotonic() - term_at

    state = stack.inspect(hello)["State"]
    assert state["ExitCode"] == 0, state
    MEASUREMENTS["SIGTERM to hello: it exited 0 after"] = f"{exited:.1f} s"
