"""What the AWS APIs enforce at deploy time and the linters do not check: the gate's
deploy-constraint layer.

cfn-lint checks the CloudFormation schema, cfn-guard and checkov check policy; none of them
knows that EC2 rejects an apostrophe in a rule description, that Fargate refuses 1024 CPU
units with 1024 MiB, or that a StopTimeout of 150 fails the task definition. Each check below
names the API reference it comes from, evaluates every value a parameter allows (AllowedValues,
or MinValue and MaxValue), and returns findings as strings; an empty list means it passes.
Each has a fixture in tests/infra/fixtures/deploy/ that fails it and only it.

Template checks take one parsed template (CfnLoader); documentation checks take the text of a
README and the real templates. tests/infra/test_deploy_checks.py runs them all.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

NO_VALUE = object()  # Ref AWS::NoValue: the property is absent


class Unknown(Exception):
    """A value the template cannot tell offline (a GetAtt, an import, a free parameter)."""


# --- evaluating a property under every combination of the parameters it uses ----------------

def _refs(node, doc: dict | None = None) -> set[str]:
    """Names of the parameters (not pseudo parameters) a node refers to, Sub included, and
    with `doc` those of the conditions its Fn::If and Condition name."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str) and not value.startswith("AWS::"):
                found.add(value)
            elif doc is not None and key in ("Fn::If", "Condition"):
                name = value[0] if key == "Fn::If" else value
                found |= _refs(doc.get("Conditions", {}).get(name, {}), doc)
                found |= _refs(value[1:] if key == "Fn::If" else [], doc)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                local = {} if isinstance(value, str) else value[1]
                found |= {n for n in re.findall(r"\$\{([^}!]+)\}", text)
                          if n not in local and "." not in n and not n.startswith("AWS::")}
                found |= _refs(local, doc)
            else:
                found |= _refs(value, doc)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value, doc)
    return found


def _allowed(doc: dict, name: str) -> list:
    """Every value a parameter can take: its AllowedValues, or the ends of MinValue/MaxValue."""
    param = doc.get("Parameters", {}).get(name)
    if param is None:
        raise Unknown(f"{name} is not a parameter")
    if "AllowedValues" in param:
        return list(param["AllowedValues"])
    if "MinValue" in param and "MaxValue" in param:
        return [param["MinValue"], param["MaxValue"]]
    raise Unknown(f"parameter {name} has neither AllowedValues nor MinValue/MaxValue")


def environments(doc: dict, *nodes) -> Iterator[dict]:
    """Every combination of values of the parameters the nodes use."""
    names = sorted(set().union(*(_refs(n, doc) for n in nodes)))
    for combo in itertools.product(*(_allowed(doc, n) for n in names)):
        yield dict(zip(names, combo))


def evaluate(node, env: dict, doc: dict) -> list:
    """The values a node can have given parameter values `env` (several when an Fn::If could
    go either way)."""
    if isinstance(node, (str, int, float, bool)):
        return [node]
    if isinstance(node, list):
        return [list(c) for c in itertools.product(*(evaluate(v, env, doc) for v in node))]
    if not isinstance(node, dict):
        raise Unknown(f"cannot evaluate {node!r}")
    if len(node) != 1 or not next(iter(node)).startswith(("Fn::", "Ref")):
        keys = list(node)
        return [dict(zip(keys, c)) for c in itertools.product(*(evaluate(node[k], env, doc) for k in keys))]
    (fn, arg), = node.items()
    if fn == "Ref":
        if arg == "AWS::NoValue":
            return [NO_VALUE]
        if arg in env:
            return [env[arg]]
        raise Unknown(f"Ref {arg}")
    if fn == "Fn::If":
        holds = condition(doc["Conditions"][arg[0]], env, doc)
        if holds is None:  # depends on something unknown offline (the Region, say): both
            return evaluate(arg[1], env, doc) + evaluate(arg[2], env, doc)
        return evaluate(arg[1] if holds else arg[2], env, doc)
    if fn == "Fn::Split":
        return [str(s).split(arg[0]) for s in evaluate(arg[1], env, doc)]
    if fn == "Fn::Select":
        return [lst[int(i)] for i in evaluate(arg[0], env, doc) for lst in evaluate(arg[1], env, doc)]
    if fn == "Fn::FindInMap":
        mapping = doc["Mappings"][arg[0]]
        out = []
        for top in evaluate(arg[1], env, doc):
            for second in evaluate(arg[2], env, doc):
                out.append(mapping[str(top)][str(second)])
        return out
    if fn == "Fn::Sub":
        text = arg if isinstance(arg, str) else arg[0]
        local = {} if isinstance(arg, str) else arg[1]

        def fill(match):
            name = match.group(1)
            if name in local:
                (value,) = evaluate(local[name], env, doc)
                return str(value)
            if name in env:
                return str(env[name])
            if name == "AWS::StackName":
                return "hello-name"  # stack names are letters, digits and hyphens
            raise Unknown(f"${{{name}}}")

        return [re.sub(r"\$\{([^}!]+)\}", fill, text)]
    raise Unknown(f"{fn} is not evaluated offline")


def condition(expr, env: dict, doc: dict) -> bool | None:
    """A condition's truth given parameter values `env`; None when it cannot be told offline."""
    (fn, arg), = expr.items()
    if fn == "Condition":
        return condition(doc["Conditions"][arg], env, doc)
    if fn == "Fn::Equals":
        try:
            (left,), (right,) = evaluate(arg[0], env, doc), evaluate(arg[1], env, doc)
        except (Unknown, ValueError):
            return None
        return str(left) == str(right)
    parts = [condition(c, env, doc) for c in arg]
    if fn == "Fn::Not":
        return None if parts[0] is None else not parts[0]
    if fn == "Fn::And":
        return False if False in parts else (None if None in parts else True)
    if fn == "Fn::Or":
        return True if True in parts else (None if None in parts else False)
    raise Unknown(f"condition function {fn}")


def values_of(doc: dict, node) -> list:
    """Every value a node can take over all parameter combinations."""
    out = []
    for env in environments(doc, node):
        out += evaluate(node, env, doc)
    return out


def resources(doc: dict, kind: str) -> Iterator[tuple[str, dict]]:
    for logical_id, res in doc.get("Resources", {}).items():
        if res.get("Type") == kind:
            yield logical_id, res.get("Properties", {})


# --- template checks ------------------------------------------------------------------------

# Fargate's task sizes, from the RegisterTaskDefinition API, cpu and memory
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html)
# and https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
FARGATE_MEMORY_BY_CPU = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4096 + 1, 1024)),
    1024: set(range(2048, 8192 + 1, 1024)),
    2048: set(range(4096, 16384 + 1, 1024)),
    4096: set(range(8192, 30720 + 1, 1024)),
    8192: set(range(16384, 61440 + 1, 4096)),
    16384: set(range(32768, 122880 + 1, 8192)),
}


def fargate_cpu_memory_pairs(doc: dict) -> list[str]:
    """A Fargate task definition's Cpu and Memory, for every parameter value, are a pair
    Fargate accepts; a pair it rejects fails RegisterTaskDefinition ("Invalid 'cpu' setting
    for task", https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-cpu-memory-error.html)."""
    findings = []
    for logical_id, props in resources(doc, "AWS::ECS::TaskDefinition"):
        if "FARGATE" not in props.get("RequiresCompatibilities", []):
            continue
        if "Cpu" not in props or "Memory" not in props:
            findings.append(f"{logical_id}: a Fargate task needs task-level Cpu and Memory")
            continue
        try:
            for env in environments(doc, props["Cpu"], props["Memory"]):
                for cpu in evaluate(props["Cpu"], env, doc):
                    for memory in evaluate(props["Memory"], env, doc):
                        if int(memory) not in FARGATE_MEMORY_BY_CPU.get(int(cpu), set()):
                            findings.append(f"{logical_id}: Fargate rejects {cpu} CPU with {memory} MiB ({env})")
        except (Unknown, ValueError) as e:
            findings.append(f"{logical_id}: Cpu/Memory cannot be checked offline: {e}")
    return findings


# ContainerDefinition.stopTimeout: "For tasks using the Fargate launch type, the max stop
# timeout value is 120 seconds"
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html).
FARGATE_MAX_STOP_TIMEOUT = 120


def ecs_stop_timeout_max(doc: dict) -> list[str]:
    """Every container's StopTimeout, for every parameter value, is within 0..120 s."""
    findings = []
    for logical_id, props in resources(doc, "AWS::ECS::TaskDefinition"):
        for container in props.get("ContainerDefinitions", []):
            if "StopTimeout" not in container:
                continue
            try:
                for value in values_of(doc, container["StopTimeout"]):
                    if not 0 <= int(value) <= FARGATE_MAX_STOP_TIMEOUT:
                        findings.append(f"{logical_id}/{container.get('Name')}: StopTimeout {value} > 120")
            except (Unknown, ValueError) as e:
                findings.append(f"{logical_id}: StopTimeout cannot be checked offline: {e}")
    return findings


# Cloud Map DnsRecord: Type A, AAAA, A and AAAA, SRV or CNAME; TTL a long from 0 to
# 2147483647 (https://docs.aws.amazon.com/cloud-map/latest/api/API_DnsRecord.html); CNAME only
# with the WEIGHTED routing policy (same page) and never with HealthCheckConfig; SOA TTL the same
# range (https://docs.aws.amazon.com/cloud-map/latest/api/API_SOA.html).
DNS_TTL_MAX = 2147483647
DNS_RECORD_SETS = [{"A"}, {"AAAA"}, {"A", "AAAA"}, {"SRV"}, {"CNAME"}]


def cloudmap_dns_records(doc: dict) -> list[str]:
    """Cloud Map record types, their combinations and TTLs, and namespace SOA TTLs, for every
    parameter value, are ones the Cloud Map API accepts."""
    findings = []
    for logical_id, props in resources(doc, "AWS::ServiceDiscovery::Service"):
        dns = props.get("DnsConfig")
        if not dns:
            continue
        records = dns.get("DnsRecords", [])
        try:
            for env in environments(doc, records, dns.get("RoutingPolicy", "")):
                for recs in evaluate(records, env, doc):
                    types = {r["Type"] for r in recs}
                    if types not in DNS_RECORD_SETS or len(types) != len(recs):
                        findings.append(f"{logical_id}: record types {sorted(types)} are not a combination Cloud Map accepts")
                    for r in recs:
                        if not isinstance(r["TTL"], int) or not 0 <= r["TTL"] <= DNS_TTL_MAX:
                            findings.append(f"{logical_id}: TTL {r['TTL']!r} outside 0..{DNS_TTL_MAX}")
                    for policy in evaluate(dns.get("RoutingPolicy", "MULTIVALUE"), env, doc):
                        if "CNAME" in types and (policy != "WEIGHTED" or "HealthCheckConfig" in props):
                            findings.append(f"{logical_id}: CNAME records need WEIGHTED routing and no HealthCheckConfig")
        except (Unknown, KeyError) as e:
            findings.append(f"{logical_id}: DnsConfig cannot be checked offline: {e}")
    for kind in ("AWS::ServiceDiscovery::PrivateDnsNamespace", "AWS::ServiceDiscovery::PublicDnsNamespace"):
        for logical_id, props in resources(doc, kind):
            soa = props.get("Properties", {}).get("DnsProperties", {}).get("SOA")
            if soa is None:
                continue
            try:
                for ttl in values_of(doc, soa["TTL"]):
                    if not isinstance(ttl, int) or not 0 <= ttl <= DNS_TTL_MAX:
                        findings.append(f"{logical_id}: SOA TTL {ttl!r} outside 0..{DNS_TTL_MAX}")
            except Unknown as e:
                findings.append(f"{logical_id}: SOA TTL cannot be checked offline: {e}")
    return findings


# The load balancer tests the process, never its dependencies (DESIGN.md, behaviour contract):
# the target group's health check path is the services' liveness route. ECS replaces a task
# its load balancer calls unhealthy
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/load-balancer-healthcheck.html),
# and hello's /readyz is 503 whenever no name endpoint is known.
LIVENESS_PATH = "/healthz"


def alb_health_check_liveness(doc: dict) -> list[str]:
    """Every target group health-checks the liveness route."""
    findings = []
    for logical_id, props in resources(doc, "AWS::ElasticLoadBalancingV2::TargetGroup"):
        path = props.get("HealthCheckPath")
        if path != LIVENESS_PATH:
            findings.append(f"{logical_id}: HealthCheckPath {path!r}, not the liveness route {LIVENESS_PATH}")
    return findings


# The character set of EC2 security-group and rule descriptions
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html,
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html). The cfn-guard rule
# ec2_descriptions_charset holds the written text to it; this check holds what Fn::Sub puts in.
EC2_DESCRIPTION = re.compile(r"^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}$")


def _descriptions(doc: dict) -> Iterator[tuple[str, object]]:
    for logical_id, props in resources(doc, "AWS::EC2::SecurityGroup"):
        if "GroupDescription" in props:
            yield logical_id, props["GroupDescription"]
        for key in ("SecurityGroupIngress", "SecurityGroupEgress"):
            for i, rule in enumerate(props.get(key, [])):
                if "Description" in rule:
                    yield f"{logical_id}.{key}[{i}]", rule["Description"]
    for kind in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
        for logical_id, props in resources(doc, kind):
            if "Description" in props:
                yield logical_id, props["Description"]


# Characters outside the set, appended to a parameter's Default to probe its AllowedPattern.
PROBE_CHARACTERS = "'\"<>%?\\^`|~é"


def ec2_description_substitutions(doc: dict) -> list[str]:
    """What Fn::Sub substitutes into a description stays within EC2's character set: a
    parameter it names has AllowedValues within the set, or an AllowedPattern that refuses
    every character outside it."""
    findings = []
    for where, description in _descriptions(doc):
        for name in sorted(_refs(description)):
            param = doc.get("Parameters", {}).get(name, {})
            if "AllowedValues" in param:
                bad = [v for v in param["AllowedValues"] if not EC2_DESCRIPTION.match(str(v))]
                if bad:
                    findings.append(f"{where}: parameter {name} allows {bad}")
                continue
            pattern, sample = param.get("AllowedPattern"), param.get("Default")
            if pattern is None:
                findings.append(f"{where}: parameter {name} substituted into a description has no AllowedPattern")
                continue
            sample = sample if isinstance(sample, str) and sample else "a"
            let_through = [c for c in PROBE_CHARACTERS if re.fullmatch(pattern, sample + c)]
            if let_through:
                findings.append(f"{where}: parameter {name}'s AllowedPattern lets through {let_through}")
        if not isinstance(description, str):
            try:
                for value in values_of(doc, description):
                    if not EC2_DESCRIPTION.match(str(value)):
                        findings.append(f"{where}: description {value!r} has characters EC2 rejects")
            except Unknown:
                pass  # each named parameter was judged above
    return findings


# ECS ServiceRegistry: "If the task definition that your service task specifies uses the awsvpc
# network mode and a type SRV DNS record is used, you must specify a containerName and
# containerPort combination or a port value. However, you can't specify both."
# (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ServiceRegistry.html)


def ecs_srv_registries_name_a_port(doc: dict) -> list[str]:
    """Whenever the Cloud Map service an ECS service registers in publishes SRV records (for
    every parameter value), its ServiceRegistries entry gives ContainerName and ContainerPort,
    or Port, and not both."""
    findings = []
    discovery = dict(resources(doc, "AWS::ServiceDiscovery::Service"))
    for logical_id, props in resources(doc, "AWS::ECS::Service"):
        for entry in props.get("ServiceRegistries", []):
            target = entry.get("RegistryArn", {}).get("Fn::GetAtt", [None])[0]
            if target not in discovery:
                continue
            records = discovery[target].get("DnsConfig", {}).get("DnsRecords", [])
            entry = {k: v for k, v in entry.items() if k in ("ContainerName", "ContainerPort", "Port")}
            try:
                for env in environments(doc, records, entry):
                    types = {r["Type"] for recs in evaluate(records, env, doc) for r in recs}
                    if "SRV" not in types:
                        continue
                    for resolved in evaluate(entry, env, doc):
                        present = {k for k, v in resolved.items() if v is not NO_VALUE}
                        pair = {"ContainerName", "ContainerPort"} <= present
                        if pair == ("Port" in present):
                            findings.append(f"{logical_id}: SRV records need ContainerName and ContainerPort, "
                                            f"or Port, not both ({env})")
            except (Unknown, KeyError) as e:
                findings.append(f"{logical_id}: ServiceRegistries cannot be checked offline: {e}")
    return findings


# hello's API mode (DISCOVERY=cloudmap) calls servicediscovery:DiscoverInstances and
# DiscoverInstancesRevision with the task role's credentials. Neither action has a resource
# type, so the statement's Resource can only be "*", and what holds it to one service is the
# condition keys servicediscovery:NamespaceName and servicediscovery:ServiceName, matched
# against the request's NamespaceName and ServiceName
# (https://docs.aws.amazon.com/service-authorization/latest/reference/list_awscloudmap.html).
# A condition that names anything else denies every call (AccessDeniedException at run time,
# after a deploy that succeeded), and an action more is privilege hello never uses.
CLOUDMAP_ACTIONS = {"servicediscovery:DiscoverInstances", "servicediscovery:DiscoverInstancesRevision"}
ECS_TASKS_PRINCIPAL = "ecs-tasks.amazonaws.com"


def _select(node, env: dict, doc: dict):
    """A node with every Fn::If resolved under `env` and Ref AWS::NoValue dropped; other
    intrinsic functions stay as they are. Raises Unknown when a condition cannot be told."""
    if isinstance(node, list):
        items = [_select(v, env, doc) for v in node]
        return [v for v in items if v is not NO_VALUE]
    if not isinstance(node, dict):
        return node
    if list(node) == ["Ref"] and node["Ref"] == "AWS::NoValue":
        return NO_VALUE
    if list(node) == ["Fn::If"]:
        name, then, otherwise = node["Fn::If"]
        holds = condition(doc["Conditions"][name], env, doc)
        if holds is None:
            raise Unknown(f"condition {name}")
        return _select(then if holds else otherwise, env, doc)
    items = {k: _select(v, env, doc) for k, v in node.items()}
    return {k: v for k, v in items.items() if v is not NO_VALUE}


def _if_conditions(node) -> set[str]:
    """Names of the conditions a node's Fn::If functions test."""
    if isinstance(node, list):
        return set().union(set(), *(_if_conditions(v) for v in node))
    if not isinstance(node, dict):
        return set()
    found = {node["Fn::If"][0]} if list(node) == ["Fn::If"] else set()
    return found.union(*(_if_conditions(v) for v in node.values()))


def _switches(doc: dict, node) -> Iterator[dict]:
    """Every combination of the parameters that decide a node's Fn::If functions and its
    DISCOVERY variable; the other parameters stay references, compared as written."""
    names: set[str] = set()
    for name in _if_conditions(node):
        names |= _refs(doc["Conditions"][name], doc)
    for container in node.get("ContainerDefinitions", []):
        for entry in container.get("Environment", []):
            if isinstance(entry, dict) and entry.get("Name") == "DISCOVERY":
                names |= _refs(entry["Value"], doc)
    names = sorted(names)
    for combo in itertools.product(*(_allowed(doc, n) for n in names)):
        yield dict(zip(names, combo))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def cloudmap_task_role(doc: dict) -> list[str]:
    """For every value of the parameters, a task definition whose container runs with
    DISCOVERY=cloudmap has a task role of this template that ecs-tasks.amazonaws.com may assume
    only for this account (aws:SourceAccount), and that allows exactly DiscoverInstances and
    DiscoverInstancesRevision on "*", under StringEquals conditions on
    servicediscovery:NamespaceName and servicediscovery:ServiceName equal to the container's
    CLOUDMAP_NAMESPACE and CLOUDMAP_SERVICE. With any other DISCOVERY the task has no role."""
    findings = []
    roles = dict(resources(doc, "AWS::IAM::Role"))
    for logical_id, props in resources(doc, "AWS::ECS::TaskDefinition"):
        try:
            for env in _switches(doc, props):
                task = _select(props, env, doc)
                for container in task.get("ContainerDefinitions", []):
                    variables = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
                    mode = variables.get("DISCOVERY", "dns")
                    (mode,) = evaluate(mode, env, doc)
                    where = f"{logical_id}/{container.get('Name')} ({env})"
                    role_arn = task.get("TaskRoleArn")
                    if mode != "cloudmap":
                        if role_arn is not None:
                            findings.append(f"{where}: DISCOVERY={mode} calls no AWS API, yet the task has a role")
                        continue
                    role_id = role_arn.get("Fn::GetAtt", [None])[0] if isinstance(role_arn, dict) else None
                    if role_id not in roles:
                        findings.append(f"{where}: DISCOVERY=cloudmap without a task role of this template")
                        continue
                    findings += _cloudmap_role_findings(where, role_id, _select(roles[role_id], env, doc), variables)
        except (Unknown, KeyError, ValueError) as e:
            findings.append(f"{logical_id}: the task role cannot be checked offline: {e}")
    return findings


def _cloudmap_role_findings(where: str, role_id: str, role: dict, variables: dict) -> list[str]:
    findings = []
    trust = role.get("AssumeRolePolicyDocument", {}).get("Statement", [])
    for statement in trust:
        principals = _as_list(statement.get("Principal", {}).get("Service", []))
        if principals != [ECS_TASKS_PRINCIPAL]:
            findings.append(f"{where}: {role_id} trusts {principals}, not only {ECS_TASKS_PRINCIPAL}")
        if statement.get("Condition", {}).get("StringEquals", {}).get("aws:SourceAccount") != {"Ref": "AWS::AccountId"}:
            findings.append(f"{where}: {role_id}'s trust policy has no aws:SourceAccount condition on this account")
    if not trust:
        findings.append(f"{where}: {role_id} has no trust policy")
    statements = [st for policy in role.get("Policies", []) for st in policy["PolicyDocument"]["Statement"]]
    if role.get("ManagedPolicyArns"):
        findings.append(f"{where}: {role_id} has managed policies, more than the two Cloud Map actions")
    allowed = set()
    for st in statements:
        actions = set(_as_list(st.get("Action", [])))
        allowed |= actions
        if st.get("Effect") != "Allow" or not actions <= CLOUDMAP_ACTIONS:
            findings.append(f"{where}: {role_id} allows {sorted(actions - CLOUDMAP_ACTIONS) or st.get('Effect')}")
            continue
        if st.get("Resource") != "*":
            findings.append(f"{where}: {role_id}: the Cloud Map actions take no resource ARN, Resource must be \"*\"")
        scope = st.get("Condition", {}).get("StringEquals", {})
        for key, variable in (("servicediscovery:NamespaceName", "CLOUDMAP_NAMESPACE"),
                              ("servicediscovery:ServiceName", "CLOUDMAP_SERVICE")):
            if key not in scope:
                findings.append(f"{where}: {role_id} does not hold the actions to one {key}")
            elif scope[key] != variables.get(variable):
                findings.append(f"{where}: {role_id}'s {key} is {scope[key]!r}, hello asks for "
                                f"{variable}={variables.get(variable)!r}")
    if allowed != CLOUDMAP_ACTIONS:
        findings.append(f"{where}: {role_id} allows {sorted(allowed)}, not exactly {sorted(CLOUDMAP_ACTIONS)}")
    return findings


# What Cloud Map accepts as names, from its API model: ServiceName for CreateService
# (https://docs.aws.amazon.com/cloud-map/latest/api/API_CreateService.html: labels of letters,
# digits, '-' and '_', neither starting nor ending with '-', 127 characters in all) and
# NamespaceNamePrivate for CreatePrivateDnsNamespace
# (https://docs.aws.amazon.com/cloud-map/latest/api/API_CreatePrivateDnsNamespace.html: 1 to 253
# printable characters, not starting with "arn:"). A name a parameter lets through and the API
# refuses fails the stack at create time, after the VPC and the cluster exist.
CLOUDMAP_SERVICE_NAME = re.compile(
    r"((?=^.{1,127}$)^([a-zA-Z0-9_][a-zA-Z0-9\-_]{0,61}[a-zA-Z0-9_]|[a-zA-Z0-9])"
    r"(\.([a-zA-Z0-9_][a-zA-Z0-9\-_]{0,61}[a-zA-Z0-9_]|[a-zA-Z0-9]))*$)|(^\.$)")
CLOUDMAP_PRIVATE_NAMESPACE = re.compile(r"^(?!arn:)[!-~]{1,253}$")
# Names a parameter might wrongly admit: hyphens at a label's ends, labels over 63 characters,
# empty labels, names over 127 (a service) and 253 (a namespace) characters.
CLOUDMAP_NAME_PROBES = [
    "name", "name-", "-name", "na-me", "a" * 63, "a" * 64, "a.b", "a..b", "a.", "a-.b",
    ".".join(["a" * 63] * 2), ".".join(["a" * 63] * 3), ".".join(["a" * 63] * 4), "arn:x",
]


def _parameter_admits(param: dict, value: str) -> bool:
    """Whether CloudFormation accepts `value` for a String parameter (AllowedPattern matches
    the whole value; MinLength and MaxLength hold; AllowedValues lists it)."""
    if "AllowedValues" in param and value not in [str(v) for v in param["AllowedValues"]]:
        return False
    if "AllowedPattern" in param and not re.fullmatch(param["AllowedPattern"], value):
        return False
    return int(param.get("MinLength", 0)) <= len(value) <= int(param.get("MaxLength", 4096))


def cloudmap_name_parameters(doc: dict) -> list[str]:
    """A parameter that names a Cloud Map service or private DNS namespace admits only names
    the Cloud Map API accepts."""
    findings = []
    targets = [(lid, props.get("Name"), CLOUDMAP_SERVICE_NAME, "CreateService")
               for lid, props in resources(doc, "AWS::ServiceDiscovery::Service")]
    targets += [(lid, props.get("Name"), CLOUDMAP_PRIVATE_NAMESPACE, "CreatePrivateDnsNamespace")
                for lid, props in resources(doc, "AWS::ServiceDiscovery::PrivateDnsNamespace")]
    for logical_id, name, api, action in targets:
        if not (isinstance(name, dict) and list(name) == ["Ref"]):
            if isinstance(name, str) and not api.search(name):
                findings.append(f"{logical_id}: {action} refuses the name {name!r}")
            continue
        param = doc.get("Parameters", {}).get(name["Ref"])
        if param is None:
            continue  # a pseudo parameter or a resource: nothing to probe
        for probe in CLOUDMAP_NAME_PROBES:
            if _parameter_admits(param, probe) and not api.search(probe):
                shown = probe if len(probe) < 20 else f"{probe[:8]}... ({len(probe)} characters)"
                findings.append(f"{logical_id}: parameter {name['Ref']} admits {shown!r}, which {action} refuses")
    return findings


# Amazon S3 lifecycle rules in a versioned bucket. Expiring a current version adds a delete
# marker; NoncurrentVersionExpiration deletes the old versions; the marker left alone with no
# version behind it is removed only by ExpiredObjectDeleteMarker, which "cannot be specified with
# Days or Date in a Lifecycle Expiration Policy"
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_LifecycleExpiration.html), so it needs a
# rule of its own. Without both, a bucket that expires objects keeps every version or every
# marker for ever, billed and emptied one by one at teardown.


def s3_versioned_lifecycle(doc: dict) -> list[str]:
    """A versioned bucket whose rules expire current versions also expires noncurrent versions
    and, in a rule without ExpirationInDays or ExpirationDate, expired delete markers; no rule
    combines ExpiredObjectDeleteMarker with a day count or date."""
    findings = []
    for logical_id, props in resources(doc, "AWS::S3::Bucket"):
        rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
        for rule in rules:
            if rule.get("ExpiredObjectDeleteMarker") and ({"ExpirationInDays", "ExpirationDate"} & set(rule)):
                findings.append(f"{logical_id}: rule {rule.get('Id')} sets ExpiredObjectDeleteMarker with a day count "
                                "or date, which S3 refuses")
        if props.get("VersioningConfiguration", {}).get("Status") != "Enabled":
            continue
        if not any({"ExpirationInDays", "ExpirationDate"} & set(r) for r in rules):
            continue
        if not any("NoncurrentVersionExpiration" in r or "NoncurrentVersionExpirationInDays" in r for r in rules):
            findings.append(f"{logical_id}: expires objects but keeps their noncurrent versions for ever")
        if not any(r.get("ExpiredObjectDeleteMarker") is True and r.get("Status") == "Enabled" for r in rules):
            findings.append(f"{logical_id}: expires objects but never removes the delete markers it leaves")
    return findings


# --- CloudWatch: the dashboard and the alarms name only metrics that exist ------------------

# The services' own metrics: infra/emf-metrics.json, the catalogue the services' tests hold
# their EMF lines to (namespace_prefix/<stack>, one dimension set [["Service"]]).
EMF_CATALOGUE = Path(__file__).resolve().parents[2] / "infra" / "emf-metrics.json"


def emf_catalogue() -> dict:
    return json.loads(EMF_CATALOGUE.read_text(encoding="utf-8"))


# Metrics AWS publishes, with the dimension sets each namespace takes:
# AWS/ApplicationELB (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-cloudwatch-metrics.html),
# AWS/ECS (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/available-metrics.html),
# ECS/ContainerInsights (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Container-Insights-metrics-ECS.html).
# A name or dimension outside these is a graph or alarm that never has data.
AWS_METRICS: dict[str, tuple[set[str], list[set[str]]]] = {
    "AWS/ApplicationELB": (
        {"RequestCount", "HTTPCode_Target_2XX_Count", "HTTPCode_Target_3XX_Count", "HTTPCode_Target_4XX_Count",
         "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_3XX_Count", "HTTPCode_ELB_4XX_Count", "HTTPCode_ELB_5XX_Count",
         "HTTPCode_ELB_502_Count", "HTTPCode_ELB_503_Count", "HTTPCode_ELB_504_Count", "TargetResponseTime",
         "HealthyHostCount", "UnHealthyHostCount", "ActiveConnectionCount", "NewConnectionCount",
         "RejectedConnectionCount", "TargetConnectionErrorCount", "ProcessedBytes", "ConsumedLCUs"},
        [{"LoadBalancer"}, {"LoadBalancer", "AvailabilityZone"}, {"LoadBalancer", "TargetGroup"},
         {"LoadBalancer", "TargetGroup", "AvailabilityZone"}, {"TargetGroup"}]),
    "AWS/ECS": (
        {"CPUUtilization", "MemoryUtilization", "CPUReservation", "MemoryReservation"},
        [{"ClusterName"}, {"ClusterName", "ServiceName"}]),
    "ECS/ContainerInsights": (
        {"RunningTaskCount", "DesiredTaskCount", "PendingTaskCount", "DeploymentCount", "TaskSetCount",
         "TaskCount", "ServiceCount", "ContainerInstanceCount", "CpuUtilized", "CpuReserved", "MemoryUtilized",
         "MemoryReserved", "NetworkRxBytes", "NetworkTxBytes", "StorageReadBytes", "StorageWriteBytes",
         "EphemeralStorageUtilized", "EphemeralStorageReserved"},
        [{"ClusterName"}, {"ClusterName", "ServiceName"}, {"ClusterName", "TaskDefinitionFamily"}]),
}
# Target-group metrics that the load balancer alone does not have.
ALB_PER_TARGET_GROUP = {"HealthyHostCount", "UnHealthyHostCount"}
# Statistics (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Statistics-definitions.html).
STATISTIC = re.compile(r"^(SampleCount|Average|Sum|Minimum|Maximum|p\d{1,2}(\.\d{1,2})?|p100)$")

# Sample values to resolve Fn::Sub with offline: pseudo parameters, and parameters without a
# Default that a nested stack receives from the others.
SAMPLE_VALUES = {
    "AWS::Region": "us-east-1", "AWS::StackName": "hello-name", "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
    "EnvironmentName": "hello-name", "MetricsNamespace": "HelloName/hello-name", "ClusterName": "hello-name",
    "NameServiceName": "hello-name-NameStack-Service-1A2B3C", "HelloServiceName": "hello-name-HelloStack-Service-4D5E6F",
    "LoadBalancerFullName": "app/hello-name-alb/50dc6c495c0c9188",
    "TargetGroupFullName": "targetgroup/hello-name-hello/73e2d6bc24d8a067",
}


def sample_value(doc: dict, node) -> str:
    """A node's value with Refs and Fn::Sub resolved from SAMPLE_VALUES or the parameters'
    Defaults; raises Unknown for anything else."""
    if isinstance(node, (str, int, float)):
        return str(node)
    if isinstance(node, dict) and list(node) == ["Ref"]:
        return _sample_name(doc, node["Ref"])
    if isinstance(node, dict) and list(node) == ["Fn::Sub"]:
        arg = node["Fn::Sub"]
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

        def fill(match):
            name = match.group(1)
            return sample_value(doc, local[name]) if name in local else _sample_name(doc, name)

        filled = re.sub(r"\$\{([^}!][^}]*)\}", fill, text)
        return filled.replace("${!", "${")
    raise Unknown(f"cannot resolve {node!r} offline")


def _sample_name(doc: dict, name: str) -> str:
    if name in SAMPLE_VALUES:
        return SAMPLE_VALUES[name]
    default = doc.get("Parameters", {}).get(name, {}).get("Default")
    if default not in (None, ""):
        return str(default)
    raise Unknown(f"${{{name}}} has no sample value")


def _metric_findings(where: str, namespace: str, metric: str, dimensions: dict, unit=None) -> list[str]:
    """What is wrong with naming this metric: an unknown namespace, metric or dimension set."""
    catalogue = emf_catalogue()
    if namespace.startswith(catalogue["namespace_prefix"] + "/"):
        if set(dimensions) != set(catalogue["dimensions"][0]):
            return [f"{where}: {metric} has dimensions {sorted(dimensions)}; the services emit {catalogue['dimensions']}"]
        service = dimensions["Service"]
        units = {m["name"]: m["unit"] for m in catalogue["services"].get(service, [])}
        if metric not in units:
            return [f"{where}: {service} emits no metric {metric} (infra/emf-metrics.json)"]
        if unit is not None and unit != units[metric]:
            return [f"{where}: {metric} is in {units[metric]}, not {unit}"]
        return []
    if namespace not in AWS_METRICS:
        return [f"{where}: namespace {namespace!r} is neither {catalogue['namespace_prefix']}/<stack> nor one "
                f"of {sorted(AWS_METRICS)}"]
    metrics, dimension_sets = AWS_METRICS[namespace]
    if metric not in metrics:
        return [f"{where}: {namespace} has no metric {metric}"]
    if set(dimensions) not in dimension_sets or (metric in ALB_PER_TARGET_GROUP and "TargetGroup" not in dimensions):
        return [f"{where}: {namespace} {metric} has no dimension set {sorted(dimensions)}"]
    return []


def _dashboard_row_findings(where: str, row) -> list[str]:
    if not isinstance(row, list) or not row:
        return [f"{where}: a metric row is a non-empty list"]
    if isinstance(row[0], dict):
        return [] if "expression" in row[0] else [f"{where}: a row that starts with an object is an expression"]
    options = row[-1] if isinstance(row[-1], dict) else {}
    names = row[:-1] if options else row
    if any(n in (".", "...") for n in names):
        return [f"{where}: shorthand rows ('.', '...') cannot be checked; write the row out"]
    if len(names) < 2 or len(names) % 2 or not all(isinstance(n, str) for n in names):
        return [f"{where}: {row!r} is not [namespace, metric, dimension, value, ...]"]
    findings = _metric_findings(where, names[0], names[1], dict(zip(names[2::2], names[3::2])))
    if "stat" in options and not STATISTIC.match(options["stat"]):
        findings.append(f"{where}: {options['stat']!r} is not a statistic")
    return findings


# Dashboard names: A-Z, a-z, 0-9, "-" and "_", at most 255 characters
# (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutDashboard.html).
DASHBOARD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def dashboard_metrics(doc: dict) -> list[str]:
    """Every dashboard's name is one PutDashboard accepts (what Fn::Sub puts in included), and
    its body, with Fn::Sub resolved from sample values, is JSON whose metric widgets name only
    the services' catalogued metrics (infra/emf-metrics.json, under its namespace prefix) or
    metrics AWS publishes in AWS/ApplicationELB, AWS/ECS and ECS/ContainerInsights."""
    findings = []
    for logical_id, props in resources(doc, "AWS::CloudWatch::Dashboard"):
        name = props.get("DashboardName")
        try:
            if name is not None and not DASHBOARD_NAME.match(sample_value(doc, name)):
                findings.append(f"{logical_id}: dashboard name {sample_value(doc, name)!r} has characters PutDashboard refuses")
            for param in sorted(_refs(name or "")):
                pattern = doc["Parameters"][param].get("AllowedPattern")
                if "AllowedValues" not in doc["Parameters"][param] and (
                        pattern is None or any(re.fullmatch(pattern, "a" + c) for c in PROBE_CHARACTERS + "./ ")):
                    findings.append(f"{logical_id}: parameter {param} in the dashboard name admits characters PutDashboard refuses")
            body = json.loads(sample_value(doc, props.get("DashboardBody")))
        except Unknown as e:
            findings.append(f"{logical_id}: the body cannot be resolved offline: {e}")
            continue
        except json.JSONDecodeError as e:
            findings.append(f"{logical_id}: the body is not JSON once resolved: {e}")
            continue
        for i, widget in enumerate(body.get("widgets", [])):
            if widget.get("type") != "metric":
                continue
            title = widget.get("properties", {}).get("title", "")
            for j, row in enumerate(widget.get("properties", {}).get("metrics", [])):
                findings += _dashboard_row_findings(f"{logical_id} widget {i} ({title}) row {j}", row)
            stat = widget.get("properties", {}).get("stat")
            if stat is not None and not STATISTIC.match(stat):
                findings.append(f"{logical_id} widget {i}: {stat!r} is not a statistic")
    return findings


# PutMetricAlarm (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html):
# a metric math alarm's queries have ids starting with a lower-case letter (MetricDataQuery),
# exactly one of them returns data, and an expression refers to ids of the same alarm;
# standard periods are 10, 30 or a multiple of 60 seconds.
METRIC_ID = re.compile(r"^[a-z][A-Za-z0-9_]*$")


def _alarm_metric_findings(where: str, doc: dict, metric: dict, unit=None) -> list[str]:
    try:
        namespace = sample_value(doc, metric.get("Namespace"))
        dimensions = {d["Name"]: sample_value(doc, d["Value"]) for d in metric.get("Dimensions", [])}
    except Unknown as e:
        return [f"{where}: cannot be resolved offline: {e}"]
    return _metric_findings(where, namespace, metric.get("MetricName", ""), dimensions, unit)


def _period_findings(where: str, period) -> list[str]:
    if not isinstance(period, int) or not (period in (10, 30) or (period > 0 and period % 60 == 0)):
        return [f"{where}: period {period!r} is not 10, 30 or a multiple of 60"]
    return []


def alarm_metrics(doc: dict) -> list[str]:
    """Every alarm names only catalogued or AWS-published metrics (as dashboard_metrics), with
    one statistic and a standard period; a metric math alarm has valid, unique ids, exactly one
    query returning data, and expressions that refer only to its own ids."""
    findings = []
    for logical_id, props in resources(doc, "AWS::CloudWatch::Alarm"):
        if "Metrics" not in props:
            findings += _alarm_metric_findings(logical_id, doc, props, props.get("Unit"))
            if ("Statistic" in props) == ("ExtendedStatistic" in props):
                findings.append(f"{logical_id}: give Statistic or ExtendedStatistic, one of them")
            for stat in (props.get("Statistic"), props.get("ExtendedStatistic")):
                if stat is not None and not STATISTIC.match(stat):
                    findings.append(f"{logical_id}: {stat!r} is not a statistic")
            findings += _period_findings(logical_id, props.get("Period"))
            continue
        queries = props["Metrics"]
        ids = [q.get("Id") for q in queries]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and METRIC_ID.match(i) for i in ids):
            findings.append(f"{logical_id}: query ids {ids} are not unique ids starting with a lower-case letter")
        if sum(1 for q in queries if q.get("ReturnData", True) is not False) != 1:
            findings.append(f"{logical_id}: exactly one query must return data (ReturnData)")
        for q in queries:
            where = f"{logical_id}/{q.get('Id')}"
            if "Expression" in q:
                unknown = set(re.findall(r"\b[a-z][A-Za-z0-9_]*\b", q["Expression"])) - set(ids)
                if unknown:
                    findings.append(f"{where}: the expression refers to {sorted(unknown)}, not ids of this alarm")
            elif "MetricStat" in q:
                stat = q["MetricStat"]
                findings += _alarm_metric_findings(where, doc, stat.get("Metric", {}), stat.get("Unit"))
                if not STATISTIC.match(str(stat.get("Stat"))):
                    findings.append(f"{where}: {stat.get('Stat')!r} is not a statistic")
                findings += _period_findings(where, stat.get("Period"))
            else:
                findings.append(f"{where}: a query has an Expression or a MetricStat")
        if props.get("DatapointsToAlarm", 0) > props.get("EvaluationPeriods", 0):
            findings.append(f"{logical_id}: DatapointsToAlarm exceeds EvaluationPeriods")
    return findings


TEMPLATE_CHECKS: dict[str, Callable[[dict], list[str]]] = {
    f.__name__: f for f in (
        fargate_cpu_memory_pairs,
        ecs_stop_timeout_max,
        cloudmap_dns_records,
        alb_health_check_liveness,
        ec2_description_substitutions,
        ecs_srv_registries_name_a_port,
        cloudmap_task_role,
        cloudmap_name_parameters,
        s3_versioned_lifecycle,
        dashboard_metrics,
        alarm_metrics,
    )
}


# --- text checks: what a template or script writes, comments aside -------------------------

# Service hosts and principals end in the partition's domain: amazonaws.com, and
# amazonaws.com.cn in the China Regions, whose endpoints are <service>.<region>.amazonaws.com.cn
# (https://docs.amazonaws.cn/en_us/general/latest/gr/endpoints-arns.html). The templates build
# them from AWS::URLSuffix (and ARNs from AWS::Partition); the scripts take the registry host
# from ECR's own answer (repositoryUri). A literal is right only where the documentation writes
# one name for every partition; each such name is listed here with its source, and the line
# that writes it must say so in a trailing comment.
LITERAL_HOSTS = {
    # ECS tasks' trust principal, as the ECS guide for the China Regions writes it.
    "ecs-tasks.amazonaws.com": "https://docs.amazonaws.cn/AmazonECS/latest/userguide/task_IAM_role.html",
    # The ELB log-delivery principal, for the Regions outside hello.yml's ElbLogDelivery
    # mapping; every China and GovCloud Region is in the mapping, so it never meets another domain.
    "logdelivery.elasticloadbalancing.amazonaws.com":
        "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html",
}
_HOST = re.compile(r"[A-Za-z0-9${}:._-]*amazonaws\.com(?:\.cn)?")
_COMMENT = re.compile(r"(?:^|\s)#")


def partition_dns_suffix(text: str) -> list[str]:
    """No template or script writes the domain amazonaws.com (or amazonaws.com.cn) outside a
    comment, except the hosts of LITERAL_HOSTS on a line with a trailing comment saying why."""
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        comment = _COMMENT.search(line)
        starts = comment.start() if comment else len(line)
        for match in _HOST.finditer(line):
            if match.start() >= starts:
                continue  # prose in a comment
            host = match.group(0)
            if host not in LITERAL_HOSTS:
                findings.append(f"line {number}: {host} writes the partition's domain; use AWS::URLSuffix")
            elif comment is None:
                findings.append(f"line {number}: {host} is right in every partition, but the line does not say so")
    return findings


TEXT_CHECKS: dict[str, Callable[[str], list[str]]] = {f.__name__: f for f in (partition_dns_suffix,)}


# --- documentation checks -------------------------------------------------------------------

def documented_parameter_names(text: str, known: set[str]) -> set[str]:
    """Parameters a README names: `Key=Value` overrides anywhere, and backticked names that are
    a parameter of some template (`Cpu`, `MinCapacity`)."""
    overrides = set(re.findall(r"(?<![\w/.-])([A-Z][a-z][A-Za-z0-9]*)=(?!=)", text))
    overrides.discard("Key")  # the placeholder in "Key=Value"
    # The fields of the ALB's X-Amzn-Trace-Id header, which the README's logging section shows.
    overrides -= {"Root", "Self", "Parent", "Sampled"}
    quoted = set(re.findall(r"`([A-Z][A-Za-z0-9]+)`", text)) & known
    return overrides | quoted


def documented_parameters_reachable(text: str, parent: dict, children: dict[str, dict]) -> list[str]:
    """Every parameter a README names exists in parent.yml and reaches a nested stack (or a
    resource of the parent): `sam deploy` silently drops an override the parent does not have
    (parameter overrides are matched by name to the template's Parameters,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_Parameter.html)."""
    known = set(parent.get("Parameters", {}))
    for child in children.values():
        known |= set(child.get("Parameters", {}))
    used = _refs(parent.get("Resources", {})) | _refs(parent.get("Rules", {}))
    findings = []
    for name in sorted(documented_parameter_names(text, known)):
        if name not in parent.get("Parameters", {}):
            findings.append(f"{name} is documented but parent.yml has no such parameter")
        elif name not in used:
            findings.append(f"{name} is a parameter of parent.yml that no nested stack receives")
    return findings


def every_parent_parameter_documented(text: str, parent: dict, children: dict[str, dict]) -> list[str]:
    """infra/README.md names every parameter of parent.yml (in its parameter table)."""
    return [f"parent.yml parameter {name} is not documented"
            for name in parent.get("Parameters", {}) if f"`{name}`" not in text]


DOC_CHECKS: dict[str, Callable[[str, dict, dict], list[str]]] = {
    f.__name__: f for f in (documented_parameters_reachable, every_parent_parameter_documented)
}
