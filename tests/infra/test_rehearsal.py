"""A rehearsal of scripts/infra-deploy and scripts/infra-teardown against moto's server, a local
AWS API emulator, on 127.0.0.1: the real scripts, the real AWS CLI and SAM CLI, no AWS account.

What moto 5.2.5 covers and this exercises: STS GetCallerIdentity; ECR CreateRepository,
DescribeRepositories, PutLifecyclePolicy (it checks the policy's form), GetLifecyclePolicy,
PutImage (standing in for `docker push`, and adding the deployed tag), BatchGetImage,
ListImages, BatchDeleteImage, DescribeImages, DeleteRepository; S3 bucket and object calls
(SAM's packaging of nested templates, a versioned bucket emptied by ListObjectVersions and
DeleteObjects); CloudFormation CreateChangeSet (executed, and not: REVIEW_IN_PROGRESS),
ExecuteChangeSet, DescribeStacks, ListStackResources on the parent and its nested stacks,
DeleteStack and its waiter; ELBv2 ModifyLoadBalancerAttributes.

What it cannot: infra/parent.yml itself (moto does not evaluate Fn::Cidr and cannot read a
nested stack's outputs with Fn::GetAtt), so the stacks here come from
tests/infra/fixtures/rehearsal; a create that fails into ROLLBACK_COMPLETE (moto answers 500
instead); a create from REVIEW_IN_PROGRESS (moto's CREATE change set on such a stack makes a
second stack of the same name); deletion protection (moto deletes a protected load balancer
anyway); ECR lifecycle evaluation (moto never expires images); the China Regions' domain (moto
answers amazonaws.com hosts in every Region); SAM's managed
bucket (`--resolve-s3`: moto's stack lacks the tags SAM checks), hence --s3-bucket; docker
build and push, hence --skip-push; and the outputs of a stack created through a change set
(moto's DescribeStacks has none for it), so the deploy here ends at "the stack has no HelloUrl
output" and never prints the URL, and teardown works on a stack without outputs, as after a
failed create.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT

VENVS = ROOT / ".venv"
REHEARSAL = Path(__file__).resolve().parent / "fixtures" / "rehearsal"
REGION = "us-east-1"
ARTIFACTS = "rehearsal-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def aws_env():
    """moto's server on a free port of 127.0.0.1, and the environment that points the AWS CLI
    and the SAM CLI at it with dummy credentials."""
    server = VENVS / "moto" / "bin" / "moto_server"
    for tool in (server, VENVS / "aws" / "bin" / "aws", VENVS / "sam" / "bin" / "sam"):
        assert tool.exists(), f"{tool} is missing: run scripts/infra-setup"
    port = _free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        # S3 by the name localhost (still the loopback address): moto finds the bucket of a
        # TemplateURL only in http://localhost:<port>/<bucket>/<key> URLs.
        AWS_ENDPOINT_URL_S3=f"http://localhost:{port}",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",  # dummies, moto's own
        AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true", SAM_CLI_TELEMETRY="0",
        SAM_CLI_POLL_DELAY="1",  # moto answers at once; SAM would wait 5 s between polls
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        PATH=f"{VENVS / 'aws' / 'bin'}:{VENVS / 'sam' / 'bin'}:{env.get('PATH', '')}",
    )
    try:
        aws(env, "s3api", "create-bucket", "--bucket", ARTIFACTS)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def aws(env: dict, *args: str):
    """An AWS CLI call against moto; its JSON answer."""
    proc = subprocess.run(["aws", "--output", "json", *args], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0, f"aws {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def script(env: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / name), *args], env=env, capture_output=True,
                          text=True, check=False, timeout=180, stdin=subprocess.DEVNULL)


def deploy(env: dict, stack: str, *args: str, template: Path = REHEARSAL / "parent.yml"):
    return script(env, "infra-deploy", "--stack-name", stack, "--arch", "X86_64", "--skip-push",
                  "--s3-bucket", ARTIFACTS, "--template", str(template), *args)


def push_fake_images(env: dict, stack: str, tag: str, build: int = 0) -> None:
    """What `docker push` would leave in ECR: a manifest under the tag, with a layer of its own
    for each service and `build` (moto derives the image digest from the layers' digests)."""
    for service in ("name", "hello"):
        blob = "sha256:" + f"{service}{build}".encode().hex().ljust(64, "0")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": blob},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2, "digest": blob}],
        }
        aws(env, "ecr", "put-image", "--repository-name", f"{stack}/{service}", "--image-tag", tag,
            "--image-manifest", json.dumps(manifest))


def image_tags(env: dict, repository: str) -> dict[str, set[str]]:
    """digest -> tags of every image in a repository."""
    return {i["imageDigest"]: set(i.get("imageTags", []))
            for i in aws(env, "ecr", "describe-images", "--repository-name", repository)["imageDetails"]}


def nested_resources(env: dict, stack: str) -> list[tuple[str, str]]:
    found = []
    for r in aws(env, "cloudformation", "list-stack-resources", "--stack-name", stack)["StackResourceSummaries"]:
        found.append((r["ResourceType"], r["PhysicalResourceId"]))
        if r["ResourceType"] == "AWS::CloudFormation::Stack":
            found += nested_resources(env, r["PhysicalResourceId"])
    return found


def fill_bucket(env: dict, bucket: str) -> None:
    """Two versions of an access-log file, as the load balancer would leave them."""
    for _ in range(2):
        aws(env, "s3api", "put-object", "--bucket", bucket, "--key", "alb/AWSLogs/log.gz", "--body", __file__)


def buckets(env: dict) -> set[str]:
    return {b["Name"] for b in aws(env, "s3api", "list-buckets")["Buckets"]}


def stack_statuses(env: dict) -> dict[str, str]:
    return {s["StackName"]: s["StackStatus"] for s in aws(env, "cloudformation", "list-stacks")["StackSummaries"]}


# --- before any AWS call ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--tag", "Release1"], "--tag 'Release1-x86_64': up to 128 lower-case letters"),
    (["Cpu=512"], "Cpu is not a parameter of parent.yml (sam deploy would drop it silently)"),
    (["NameImageUri=x"], "NameImageUri is set by infra-deploy"),
    (["NameRecordType=CNAME"], "NameRecordType must be A or SRV, not CNAME"),
    (["NameRoutingPolicy=FAILOVER"], "NameRoutingPolicy must be MULTIVALUE or WEIGHTED, not FAILOVER"),
    (["MinCapacity=two"], "MinCapacity must be a whole number, not two"),
    (["MinCapacity=5", "MaxCapacity=3"], "MinCapacity 5 is greater than MaxCapacity 3: Application Auto Scaling"),
])
def test_deploy_refuses_bad_input_before_any_aws_call(aws_env, args, message):
    env = dict(aws_env, AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens: any call would fail
    result = script(env, "infra-deploy", "--skip-push", *args)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"infra-deploy: error: {message}"), result.stderr


# --- deploy, refuse what the stack cannot take, tear down -------------------------------------

EXISTING_STACK_REFUSALS = [
    (["NameRecordType=SRV"], "NameRecordType cannot change from A to SRV on an existing stack"),
    (["NameRoutingPolicy=WEIGHTED"], "NameRoutingPolicy cannot change from MULTIVALUE to WEIGHTED on an existing "
     "stack (Cloud Map cannot change a service's routing policy in place)"),
    (["VpcCidr=10.1.0.0/16"], "VpcCidr cannot change from 10.0.0.0/16 to 10.1.0.0/16 on an existing stack "
     "(a new CIDR replaces the VPC while the internet gateway"),
    (["NamespaceName=svc.internal"], "NamespaceName cannot change from internal to svc.internal on an existing "
     "stack (a new name replaces the Cloud Map namespace"),
    (["NameServiceName=names"], "NameServiceName cannot change from name to names on an existing stack "
     "(a new name replaces name's Cloud Map service"),
    # One bound given, the other the stack's.
    (["MinCapacity=11"], "MinCapacity 11 is greater than MaxCapacity 10 (the stack's current MaxCapacity)"),
    (["MaxCapacity=1"], "MinCapacity 2 is greater than MaxCapacity 1 (the stack's current MinCapacity)"),
]


def test_deploy_then_teardown(aws_env):
    stack = "rehearsal"
    # No image under the tag yet: the script made the repositories, with their lifecycle
    # policy, and named the tag it derived from the build inputs.
    missing = deploy(aws_env, stack)
    assert missing.returncode == 1
    line = missing.stderr.strip().splitlines()[-1]
    tag = re.fullmatch(r"infra-deploy: error: name: no image rehearsal/name:(src-[0-9a-f]{16}-x86_64) in ECR, "
                       r"and --skip-push builds none", line)
    assert tag, missing.stderr
    # The lifecycle policy: the deployed images' prefix first, then the 10 newest of any tag,
    # which ECR requires to have the highest rulePriority.
    policy = json.loads(aws(aws_env, "ecr", "get-lifecycle-policy", "--repository-name",
                            f"{stack}/hello")["lifecyclePolicyText"])
    keep, newest = sorted(policy["rules"], key=lambda r: r["rulePriority"])
    assert keep["selection"]["tagStatus"] == "tagged"
    assert keep["selection"]["tagPrefixList"] == [f"deployed-{stack}-"]
    assert newest["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}

    push_fake_images(aws_env, stack, tag.group(1))
    done = deploy(aws_env, stack)  # the same inputs give the same tag: both images are found
    assert f"name: {tag.group(1)} already in ECR" in done.stderr, done.stderr
    # The stack is created; moto gives a stack made through a change set no outputs, so the
    # script stops where it reads the URL, as it would after a create that left none.
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "infra-deploy: error: the stack has no HelloUrl output"), done.stderr
    (described,) = aws(aws_env, "cloudformation", "describe-stacks", "--stack-name", stack)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    params = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}
    # Pinned by digest, on the repository URI as ECR gives it (its host carries the partition's
    # domain, which the script never writes itself).
    (repo,) = aws(aws_env, "ecr", "describe-repositories", "--repository-names", f"{stack}/name")["repositories"]
    (image,) = aws(aws_env, "ecr", "describe-images", "--repository-name", f"{stack}/name")["imageDetails"]
    assert params["NameImageUri"] == f"{repo['repositoryUri']}@{image['imageDigest']}"
    resources = nested_resources(aws_env, stack)
    assert [kind for kind, _ in resources].count("AWS::CloudFormation::Stack") == 2

    # Changes the existing stack cannot take, refused before CloudFormation is asked (the runs
    # only read, so they go side by side).
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda case: deploy(aws_env, stack, *case[0]), EXISTING_STACK_REFUSALS))
    for (args, message), refused in zip(EXISTING_STACK_REFUSALS, runs):
        assert refused.returncode == 1, args
        assert refused.stderr.strip().splitlines()[-1].startswith(f"infra-deploy: error: {message}"), refused.stderr
    # A second deploy of newer images: the deployed tag follows the digest the stack runs. The
    # same values of fixed parameters are no change, so the deploy goes on.
    (first,) = [d for d, tags in image_tags(aws_env, f"{stack}/name").items() if tag.group(1) in tags]
    assert f"deployed-{stack}-{first.removeprefix('sha256:')[:12]}" in image_tags(aws_env, f"{stack}/name")[first]
    push_fake_images(aws_env, stack, "second-x86_64", build=2)
    again = deploy(aws_env, stack, "--tag", "second", "NamespaceName=internal", "MinCapacity=10")
    assert again.stderr.strip().splitlines()[-1].startswith("infra-deploy: error: the stack has no HelloUrl output")
    tags = image_tags(aws_env, f"{stack}/name")
    (second,) = [d for d, t in tags.items() if "second-x86_64" in t]
    assert tags[second] == {"second-x86_64", f"deployed-{stack}-{second.removeprefix('sha256:')[:12]}"}
    assert tags[first] == {tag.group(1)}  # no longer run: back to the 10-newest rule

    (bucket,) = [pid for kind, pid in resources if kind == "AWS::S3::Bucket"]
    (balancer,) = [pid for kind, pid in resources if kind == "AWS::ElasticLoadBalancingV2::LoadBalancer"]
    fill_bucket(aws_env, bucket)

    gone = script(aws_env, "infra-teardown", "--stack-name", stack)
    assert gone.returncode == 0, gone.stderr
    assert f"turning off deletion protection and access logging of {balancer}" in gone.stderr
    assert f"emptying s3://{bucket}" in gone.stderr
    assert stack_statuses(aws_env)[stack] == "DELETE_COMPLETE"
    assert bucket not in buckets(aws_env)  # moto keeps a bucket that still holds objects
    repos = aws(aws_env, "ecr", "describe-repositories")["repositories"]
    assert not [r for r in repos if r["repositoryName"].startswith(f"{stack}/")]


def test_deploy_of_a_new_stack_compares_a_bound_with_the_template_default(aws_env):
    result = deploy(aws_env, "never-created", "MinCapacity=11")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "infra-deploy: error: MinCapacity 11 is greater than MaxCapacity 10 (the template's default MaxCapacity)")
    repos = aws(aws_env, "ecr", "describe-repositories")["repositories"]
    assert not [r for r in repos if r["repositoryName"].startswith("never-created/")]  # nothing was made


def test_stack_left_in_review_in_progress(aws_env):
    """A first deploy whose change set fails or is interrupted leaves the stack in
    REVIEW_IN_PROGRESS, which never ends; moto makes that state from a change set created and
    not executed. infra-deploy goes on from it, here as far as the images (--skip-push makes
    none). moto cannot take the create further: its CREATE change set on such a stack makes a
    second stack of the same name, where CloudFormation reuses the first, so SAM would wait on
    the wrong one. infra-teardown deletes it."""
    stack = "stuck"
    aws(aws_env, "cloudformation", "create-change-set", "--stack-name", stack, "--change-set-name", "first",
        "--change-set-type", "CREATE", "--template-body", (REHEARSAL / "logs.yml").read_text(encoding="utf-8"))
    assert stack_statuses(aws_env)[stack] == "REVIEW_IN_PROGRESS"

    resumed = deploy(aws_env, stack)
    assert resumed.returncode == 1
    assert ("infra-deploy: stack stuck is REVIEW_IN_PROGRESS (an earlier first deploy never ran its change set): "
            "creating it") in resumed.stderr
    assert resumed.stderr.strip().splitlines()[-1].startswith("infra-deploy: error: name: no image stuck/name:")

    gone = script(aws_env, "infra-teardown", "--stack-name", stack)
    assert gone.returncode == 0, gone.stderr
    assert "infra-teardown: stack stuck is REVIEW_IN_PROGRESS (a first deploy that never ran its change set): " \
        "deleting it" in gone.stderr
    assert stack_statuses(aws_env)[stack] == "DELETE_COMPLETE"


def test_teardown_of_no_stack_says_so(aws_env):
    result = script(aws_env, "infra-teardown", "--stack-name", "never-deployed", "--keep-images")
    assert result.returncode == 0
    assert "infra-teardown: no stack never-deployed in us-east-1" in result.stderr
