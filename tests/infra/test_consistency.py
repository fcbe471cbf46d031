"""The port, the namespace and name's service name are declared once (parent.yml) and agree
with the services' own defaults; the wiring carries them everywhere else; health checks name
real subcommands and routes; name's drain time follows the record TTL; the metrics catalogue is
the observability contract, and its namespace is declared once and reaches both services."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest

import deploy_checks
from conftest import TEMPLATE_NAMES, ROOT, rust_sources, source, template

# Route 53 propagates a change "generally within 60 seconds"
# (https://docs.aws.amazon.com/Route53/latest/APIReference/API_ChangeResourceRecordSets.html).
ROUTE53_PROPAGATION_SECONDS = 60
FARGATE_MAX_STOP_TIMEOUT = 120


def rust_const(relative: str, name: str) -> str:
    text = source(relative)
    match = re.search(rf"\bconst\s+{name}\s*:\s*[^=]+=\s*(.+?);", text)
    assert match, f"{relative} no longer declares `const {name}`; the consistency test reads it"
    return match.group(1).strip().strip('"')


@pytest.fixture(scope="module")
def default_port() -> int:
    return int(rust_const("common/src/config.rs", "DEFAULT_PORT"))


@pytest.fixture(scope="module")
def default_url():
    return urlsplit(rust_const("hello/src/config.rs", "DEFAULT_NAME_SERVICE_URL"))


def param_default(tmpl: str, param: str):
    return template(tmpl)["Parameters"][param]["Default"]


def nested(stack: str) -> dict:
    return template("parent")["Resources"][stack]["Properties"]["Parameters"]


def container(tmpl: str) -> dict:
    (only,) = template(tmpl)["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    return only


def env(tmpl: str) -> dict:
    return {e["Name"]: e["Value"] for e in container(tmpl)["Environment"]}


# --- declared once, agreeing with the code -------------------------------------------------

def test_port_defaults_agree_with_the_services(default_port, default_url):
    assert param_default("parent", "ContainerPort") == default_port
    assert param_default("name", "ContainerPort") == default_port
    assert param_default("hello", "ContainerPort") == default_port
    assert default_url.port == default_port


def test_namespace_and_service_name_agree_with_hello_default(default_url):
    service, namespace = default_url.hostname.split(".", 1)
    assert param_default("parent", "NamespaceName") == namespace
    assert param_default("cluster", "NamespaceName") == namespace
    assert param_default("parent", "NameServiceName") == service
    assert param_default("name", "DiscoveryName") == service


def test_hello_url_is_built_from_the_outputs_and_matches_the_default(default_url):
    url = env("hello")["NAME_SERVICE_URL"]
    assert url == {"Fn::Sub": "http://${NameDiscoveryName}.${NamespaceName}:${NameServicePort}"}
    filled = url["Fn::Sub"].replace("${NameDiscoveryName}", param_default("parent", "NameServiceName"))
    filled = filled.replace("${NamespaceName}", param_default("parent", "NamespaceName"))
    filled = filled.replace("${NameServicePort}", str(param_default("parent", "ContainerPort")))
    assert filled == default_url.geturl()


def test_parent_wires_each_value_from_one_place():
    assert nested("ClusterStack")["NamespaceName"] == {"Ref": "NamespaceName"}
    assert nested("NameStack")["ContainerPort"] == {"Ref": "ContainerPort"}
    assert nested("NameStack")["DiscoveryName"] == {"Ref": "NameServiceName"}
    assert nested("HelloStack")["ContainerPort"] == {"Ref": "ContainerPort"}
    hello = nested("HelloStack")
    assert hello["NamespaceName"] == {"Fn::GetAtt": ["ClusterStack", "Outputs.NamespaceName"]}
    assert hello["NameDiscoveryName"] == {"Fn::GetAtt": ["NameStack", "Outputs.DiscoveryName"]}
    assert hello["NameServicePort"] == {"Fn::GetAtt": ["NameStack", "Outputs.ServicePort"]}
    assert hello["NameRecordType"] == {"Fn::GetAtt": ["NameStack", "Outputs.RecordType"]}
    assert hello["NameSecurityGroupId"] == {"Fn::GetAtt": ["NameStack", "Outputs.SecurityGroupId"]}
    outputs = template("name")["Outputs"]
    assert outputs["DiscoveryName"]["Value"] == {"Fn::GetAtt": ["DiscoveryService", "Name"]}
    assert outputs["ServicePort"]["Value"] == {"Ref": "ContainerPort"}
    assert outputs["RecordType"]["Value"] == {"Ref": "RecordType"}
    assert template("cluster")["Outputs"]["NamespaceName"]["Value"] == {"Ref": "NamespaceName"}
    namespace = template("cluster")["Resources"]["Namespace"]["Properties"]["Name"]
    assert namespace == {"Ref": "NamespaceName"}


def test_parent_defaults_match_the_nested_defaults():
    # A knob the parent passes through has the same default on both sides.
    parent_params = template("parent")["Parameters"]
    stacks = {"VpcStack": "vpc", "ClusterStack": "cluster", "NameStack": "name", "HelloStack": "hello",
              "MonitoringStack": "monitoring"}
    checked = 0
    for stack, child in stacks.items():
        child_params = template(child)["Parameters"]
        for key, value in nested(stack).items():
            if isinstance(value, dict) and "Ref" in value and value["Ref"] in parent_params:
                parent_default = parent_params[value["Ref"]].get("Default")
                child_default = child_params[key].get("Default")
                if parent_default is not None and child_default is not None:
                    assert parent_default == child_default, f"{stack}.{key}"
                    checked += 1
                # The parent refuses what the nested stack would refuse, before anything exists.
                for constraint in ("AllowedValues", "AllowedPattern", "MinLength", "MaxLength", "MinValue", "MaxValue"):
                    if constraint in child_params[key]:
                        assert parent_params[value["Ref"]].get(constraint) == child_params[key][constraint], (
                            f"{stack}.{key}: {constraint}")
    assert checked >= 10


def _literals(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _literals(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _literals(v, f"{path}/{i}")
    else:
        yield path, node


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_port_is_written_only_as_a_parameter_default(name, default_port):
    doc = {k: v for k, v in template(name).items() if k != "Parameters"}
    found = [p for p, v in _literals(doc) if str(v) == str(default_port)]
    assert found == [], f"{name}.yml writes the port {default_port} at {found}"


def test_every_use_of_the_port_is_the_parameter():
    name = container("name")
    assert name["PortMappings"][0]["ContainerPort"] == {"Ref": "ContainerPort"}
    assert env("name")["PORT"] == {"Ref": "ContainerPort"}
    hello = container("hello")
    assert hello["PortMappings"][0]["ContainerPort"] == {"Ref": "ContainerPort"}
    assert env("hello")["PORT"] == {"Ref": "ContainerPort"}
    res = template("hello")["Resources"]
    assert res["TargetGroup"]["Properties"]["Port"] == {"Ref": "ContainerPort"}
    assert res["Service"]["Properties"]["LoadBalancers"][0]["ContainerPort"] == {"Ref": "ContainerPort"}
    for rule in ("HelloIngressFromLoadBalancer", "LoadBalancerEgressToHello"):
        props = res[rule]["Properties"]
        assert props["FromPort"] == props["ToPort"] == {"Ref": "ContainerPort"}, rule
    for rule in ("NameServiceIngressFromHello", "HelloEgressToName"):
        props = res[rule]["Properties"]
        assert props["FromPort"] == props["ToPort"] == {"Ref": "NameServicePort"}, rule


# --- record type, SRV registration ----------------------------------------------------------

def test_hello_discovery_record_follows_name_record_type():
    hello = template("hello")
    assert env("hello")["DISCOVERY_RECORD"] == {"Fn::If": ["NameSrvRecords", "srv", "a"]}
    assert hello["Conditions"]["NameSrvRecords"] == {"Fn::Equals": [{"Ref": "NameRecordType"}, "SRV"]}
    # hello's RecordKind parses exactly these spellings.
    options = source("upstream/src/lookup/record.rs")
    parse = re.search(r"impl FromStr for RecordKind\s*\{(.*?)\n\}", options, re.DOTALL)
    assert parse, "upstream/src/lookup/record.rs does not parse a RecordKind"
    spellings = re.findall(r'"(\w+)"\s*=>\s*Ok\(Self::', parse.group(1))
    assert sorted(spellings) == ["a", "srv"]


def test_srv_registration_names_the_container_and_port():
    (registry,) = template("name")["Resources"]["Service"]["Properties"]["ServiceRegistries"]
    assert registry["ContainerName"] == {"Fn::If": ["SrvRecords", container("name")["Name"], {"Ref": "AWS::NoValue"}]}
    assert registry["ContainerPort"] == {"Fn::If": ["SrvRecords", {"Ref": "ContainerPort"}, {"Ref": "AWS::NoValue"}]}


# --- health checks name real things ---------------------------------------------------------

def test_healthcheck_subcommand_exists_in_the_code():
    common = rust_sources("common/src")
    assert re.search(
        r"derive\([^)]*Subcommand[^)]*\)\]\s*pub\s+enum\s+\w+\s*\{[^}]*\bHealthcheck\b", common
    ), "common/src declares no clap Subcommand enum with a `Healthcheck` variant (`healthcheck`)"
    for service in ("name", "hello"):
        command = container(service)["HealthCheck"]["Command"]
        assert command == ["CMD", f"/{service}", "healthcheck"]
        main = source(f"{service}/src/main.rs")
        assert "common::main_loop::main" in main, f"{service}/src/main.rs does not run the shared main"
    assert "Command::Healthcheck" in source("common/src/main_loop.rs"), (
        "the shared main does not handle the healthcheck subcommand"
    )


def test_binaries_are_where_the_health_checks_run_them():
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile yet")
    text = dockerfile.read_text(encoding="utf-8")
    for service in ("name", "hello"):
        assert re.search(rf'ENTRYPOINT\s*\[\s*"/{service}"', text), f"Dockerfile: no ENTRYPOINT [\"/{service}\"]"


def test_target_group_health_path_is_a_hello_route():
    path = template("hello")["Resources"]["TargetGroup"]["Properties"]["HealthCheckPath"]
    assert path == "/healthz"
    assert f'"{path}"' in rust_sources("hello/src"), f"hello/src routes no {path}"


def test_environment_variables_are_ones_the_services_read():
    code = {s: rust_sources(f"{s}/src", "common/src") for s in ("name", "hello")}
    for service in ("name", "hello"):
        for variable in env(service):
            if variable == "RUST_LOG":  # read by tracing's EnvFilter, not by name in our code
                continue
            assert f'"{variable}"' in code[service], f"{service} does not read {variable}"


# --- drain follows the TTL -----------------------------------------------------------------

def test_drain_and_stop_timeout_follow_every_allowed_ttl():
    # drain >= TTL (the VPC resolver's copy) + propagation + hello's refresh ceiling, and
    # StopTimeout a few seconds more, within Fargate's 120.
    name = template("name")
    ttls = name["Parameters"]["RecordTtl"]["AllowedValues"]
    assert template("parent")["Parameters"]["NameRecordTtl"]["AllowedValues"] == ttls
    assert 0 not in ttls
    ceiling = name["Mappings"]["Callers"]["Hello"]["DnsMaxTtlSeconds"]
    table = name["Mappings"]["DrainByTtl"]
    assert sorted(int(k) for k in table) == sorted(ttls)
    for ttl in ttls:
        row = table[str(ttl)]
        drain, stop = int(row["DrainSeconds"]), int(row["StopTimeout"])
        assert drain >= ttl + ROUTE53_PROPAGATION_SECONDS + ceiling, f"TTL {ttl}: drain {drain} too short"
        assert drain + 3 <= stop <= FARGATE_MAX_STOP_TIMEOUT, f"TTL {ttl}: StopTimeout {stop}"
    assert env("name")["DRAIN_SECONDS"] == {"Fn::FindInMap": ["DrainByTtl", {"Ref": "RecordTtl"}, "DrainSeconds"]}
    assert container("name")["StopTimeout"] == {"Fn::FindInMap": ["DrainByTtl", {"Ref": "RecordTtl"}, "StopTimeout"]}


def test_hello_refresh_ceiling_is_the_one_the_drain_assumes():
    assert template("name")["Outputs"]["CallerDnsMaxTtl"]["Value"] == {
        "Fn::FindInMap": ["Callers", "Hello", "DnsMaxTtlSeconds"]}
    assert nested("HelloStack")["NameDnsMaxTtl"] == {"Fn::GetAtt": ["NameStack", "Outputs.CallerDnsMaxTtl"]}
    assert env("hello")["DNS_MAX_TTL"] == {"Fn::Sub": "${NameDnsMaxTtl}s"}


def test_namespace_negative_ttl_follows_the_record_ttl():
    assert nested("ClusterStack")["NamespaceNegativeTtl"] == {"Ref": "NameRecordTtl"}
    soa = template("cluster")["Resources"]["Namespace"]["Properties"]["Properties"]["DnsProperties"]["SOA"]
    assert soa["TTL"] == {"Ref": "NamespaceNegativeTtl"}


def test_elb_account_regions_are_the_mapping_regions():
    hello = template("hello")
    mapping = set(hello["Mappings"]["ElbLogDelivery"])
    conditions = hello["Conditions"]
    listed = set()
    for group in ("ElbAccountRegionA", "ElbAccountRegionB", "ElbAccountRegionC"):
        for equals in conditions[group]["Fn::Or"]:
            (ref, region) = equals["Fn::Equals"]
            assert ref == {"Ref": "AWS::Region"}
            listed.add(region)
    assert listed == mapping
    # Jakarta is in AWS's table of ELB accounts (it was a service-principal Region here once).
    assert hello["Mappings"]["ElbLogDelivery"]["ap-southeast-3"]["Account"] == "589379963580"


# --- metrics: the catalogue, and the namespace declared once ---------------------------------

def catalogue() -> dict:
    return json.loads((ROOT / "infra" / "emf-metrics.json").read_text(encoding="utf-8"))


def test_emf_catalogue_is_the_observability_contract():
    # 18 metrics for hello and 4 for name, in one dimension set, as the contract lists them.
    c = catalogue()
    assert c["namespace_prefix"] == "HelloName"
    assert c["dimensions"] == [["Service"]]
    hello = [m["name"] for m in c["services"]["hello"]]
    name = [m["name"] for m in c["services"]["name"]]
    assert sorted(c["services"]) == ["hello", "name"]
    assert len(hello) == len(set(hello)) == 18
    assert name == ["Requests", "Requests4xx", "Requests5xx", "Latency"] == hello[:4]
    units = {m["name"]: m["unit"] for m in c["services"]["hello"] + c["services"]["name"]}
    assert {n for n, u in units.items() if u != "Count"} == {"Latency"} and units["Latency"] == "Milliseconds"


def test_readme_states_the_custom_metric_count():
    total = sum(len(metrics) for metrics in catalogue()["services"].values())
    assert total == 22
    assert f"{total} custom metrics" in (ROOT / "infra" / "README.md").read_text(encoding="utf-8")


def test_metrics_namespace_is_declared_once_and_reaches_services_and_monitoring():
    prefix = catalogue()["namespace_prefix"]
    declared = template("cluster")["Outputs"]["MetricsNamespace"]["Value"]
    assert declared == {"Fn::Sub": f"{prefix}/${{EnvironmentName}}"}
    assert nested("ClusterStack")["EnvironmentName"] == {"Ref": "AWS::StackName"}
    for stack in ("NameStack", "HelloStack", "MonitoringStack"):
        assert nested(stack)["MetricsNamespace"] == {"Fn::GetAtt": ["ClusterStack", "Outputs.MetricsNamespace"]}, stack
    for service in ("name", "hello"):
        assert env(service)["METRICS_EMF_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    # CloudWatch namespaces: at most 255 characters, none under AWS/ (the longest stack name
    # is 31 characters).
    assert len(f"{prefix}/") + 31 <= 255 and not prefix.startswith("AWS/")


def test_readme_states_the_dashboard_metric_count_within_the_free_tier():
    # The free tier's dashboards hold up to 50 metrics each (https://aws.amazon.com/cloudwatch/pricing/).
    doc = template("monitoring")
    body = json.loads(deploy_checks.sample_value(doc, doc["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
    count = sum(len(w["properties"]["metrics"]) for w in body["widgets"] if w["type"] == "metric")
    assert count <= 50
    assert f"graphs {count} metrics" in (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
