"""The deploy-constraint layer (deploy_checks.py): the real templates and READMEs pass every
check, every check has a fixture that fails it and only it, and the templates' old defects put
back fail the check written for them."""

from __future__ import annotations

import copy

import pytest

import deploy_checks
from conftest import FIXTURES, INFRA, ROOT, TEMPLATE_NAMES, load, template

DEPLOY_FIXTURES = FIXTURES / "deploy"
CHILDREN = ("vpc", "cluster", "name", "hello", "monitoring")


def children() -> dict[str, dict]:
    return {name: template(name) for name in CHILDREN}


@pytest.mark.parametrize("check", sorted(deploy_checks.TEMPLATE_CHECKS))
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_real_template_passes(name, check):
    assert deploy_checks.TEMPLATE_CHECKS[check](template(name)) == []


# The templates and the deploy scripts: what the text checks read.
TEXT_FILES = [f"infra/{name}.yml" for name in TEMPLATE_NAMES] + [
    f"scripts/{name}" for name in ("infra-check", "infra-deploy", "infra-lib.sh", "infra-setup", "infra-teardown")]


@pytest.mark.parametrize("check", sorted(deploy_checks.TEXT_CHECKS))
@pytest.mark.parametrize("path", TEXT_FILES)
def test_real_file_passes_text_check(path, check):
    assert deploy_checks.TEXT_CHECKS[check]((ROOT / path).read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("readme", ["README.md", "infra/README.md"])
def test_documented_parameters_reach_the_nested_stacks(readme):
    text = (ROOT / readme).read_text(encoding="utf-8")
    assert deploy_checks.documented_parameters_reachable(text, template("parent"), children()) == []


def test_infra_readme_documents_every_parent_parameter():
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    assert deploy_checks.every_parent_parameter_documented(text, template("parent"), children()) == []


def test_every_check_has_a_fixture_and_every_fixture_a_check():
    fixtures = {p.stem for p in DEPLOY_FIXTURES.iterdir()}
    assert fixtures == (set(deploy_checks.TEMPLATE_CHECKS) | set(deploy_checks.TEXT_CHECKS)
                        | set(deploy_checks.DOC_CHECKS))


def _failed_template_checks(path) -> list[str]:
    """The template and text checks a template file fails."""
    doc, text = load(path), path.read_text(encoding="utf-8")
    failed = [name for name, fn in deploy_checks.TEMPLATE_CHECKS.items() if fn(doc)]
    failed += [name for name, fn in deploy_checks.TEXT_CHECKS.items() if fn(text)]
    return sorted(failed)


@pytest.mark.parametrize("check", sorted(deploy_checks.TEMPLATE_CHECKS) + sorted(deploy_checks.TEXT_CHECKS))
def test_template_fixture_fails_exactly_its_check(check):
    assert _failed_template_checks(DEPLOY_FIXTURES / f"{check}.yml") == [check]


@pytest.mark.parametrize("check", sorted(deploy_checks.DOC_CHECKS))
def test_doc_fixture_fails_exactly_its_check(check):
    text = (DEPLOY_FIXTURES / f"{check}.md").read_text(encoding="utf-8")
    failed = sorted(name for name, fn in deploy_checks.DOC_CHECKS.items()
                    if fn(text, template("parent"), children()))
    assert check in failed
    # The reachability check has nothing to say about a doc that names only real parameters.
    if check == "every_parent_parameter_documented":
        assert "documented_parameters_reachable" not in failed


def _broken(name: str, mutate) -> dict:
    doc = copy.deepcopy(template(name))
    mutate(doc)
    return doc


def _set_task_size(doc):
    props = doc["Resources"]["TaskDefinition"]["Properties"]
    doc["Parameters"]["TaskSize"]["AllowedValues"].append("1024/1024")
    return props


def _edit_dashboard(old: str, new: str):
    """A mutation of monitoring.yml's dashboard body (the text Fn::Sub resolves)."""
    def mutate(doc):
        props = doc["Resources"]["Dashboard"]["Properties"]
        assert old in props["DashboardBody"]["Fn::Sub"]
        props["DashboardBody"]["Fn::Sub"] = props["DashboardBody"]["Fn::Sub"].replace(old, new, 1)
    return mutate


def _alarm(doc, name):
    return doc["Resources"][name]["Properties"]


def _discover_statement(doc):
    return doc["Resources"]["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]


OLD_DEFECTS = {
    # The findings, put back into today's templates one at a time.
    "1024 CPU with 1024 MiB": ("name", _set_task_size, "fargate_cpu_memory_pairs"),
    "TTL 60 with drain TTL + 90": (
        "name", lambda d: (d["Parameters"]["RecordTtl"]["AllowedValues"].append(60),
                           d["Mappings"]["DrainByTtl"].update({"60": {"DrainSeconds": "150", "StopTimeout": 155}})),
        "ecs_stop_timeout_max"),
    "load balancer checks /readyz": (
        "hello", lambda d: d["Resources"]["TargetGroup"]["Properties"].update(HealthCheckPath="/readyz"),
        "alb_health_check_liveness"),
    "record type CNAME with MULTIVALUE": (
        "name", lambda d: d["Parameters"]["RecordType"]["AllowedValues"].append("CNAME"), "cloudmap_dns_records"),
    "negative SOA TTL": (
        "cluster", lambda d: d["Parameters"]["NamespaceNegativeTtl"]["AllowedValues"].append(-1),
        "cloudmap_dns_records"),
    "SRV registration without the container": (
        "name", lambda d: d["Resources"]["Service"]["Properties"]["ServiceRegistries"][0].pop("ContainerName"),
        "ecs_srv_registries_name_a_port"),
    "SRV registration with both a port and the container": (
        "name", lambda d: d["Resources"]["Service"]["Properties"]["ServiceRegistries"][0].update(
            Port={"Ref": "ContainerPort"}), "ecs_srv_registries_name_a_port"),
    "task role may call every Cloud Map action": (
        "hello", lambda d: _discover_statement(d).update(Action="servicediscovery:*"), "cloudmap_task_role"),
    "task role scoped to another service than hello asks for": (
        "hello", lambda d: _discover_statement(d)["Condition"]["StringEquals"].update(
            {"servicediscovery:ServiceName": {"Ref": "NamespaceName"}}), "cloudmap_task_role"),
    "task role without aws:SourceAccount": (
        "hello", lambda d: d["Resources"]["TaskRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0].pop(
            "Condition"), "cloudmap_task_role"),
    "task role in DNS mode too": (
        "hello", lambda d: d["Resources"]["TaskDefinition"]["Properties"].update(
            TaskRoleArn={"Fn::GetAtt": ["TaskRole", "Arn"]}), "cloudmap_task_role"),
    "API mode without a task role": (
        "hello", lambda d: d["Resources"]["TaskDefinition"]["Properties"].pop("TaskRoleArn"), "cloudmap_task_role"),
    "service name pattern admits a trailing hyphen": (
        "name", lambda d: d["Parameters"]["DiscoveryName"].update(AllowedPattern="^[a-z][a-z0-9-]{0,62}$"),
        "cloudmap_name_parameters"),
    "namespace name without its 253-character bound": (
        "cluster", lambda d: d["Parameters"]["NamespaceName"].pop("MaxLength"), "cloudmap_name_parameters"),
    "delete markers in the expiry rule itself": (
        "hello", lambda d: d["Resources"]["AccessLogsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0].update(
            ExpiredObjectDeleteMarker=True), "s3_versioned_lifecycle"),
    "no rule for delete markers": (
        "hello", lambda d: d["Resources"]["AccessLogsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"].pop(),
        "s3_versioned_lifecycle"),
    "dashboard body that is not JSON": (
        "monitoring", _edit_dashboard('"start": "-PT3H",', '"start": "-PT3H",,'), "dashboard_metrics"),
    "dashboard graph of a metric hello does not emit": (
        "monitoring", _edit_dashboard('"AttemptsLostToHedge"', '"AttemptsLost"'), "dashboard_metrics"),
    "dashboard graph of a misspelt load balancer metric": (
        "monitoring", _edit_dashboard('"HTTPCode_Target_5XX_Count"', '"HTTPCode_Target_5xx_Count"'), "dashboard_metrics"),
    "dashboard graph of the services' metrics without the stack in the namespace": (
        "monitoring", _edit_dashboard('["${MetricsNamespace}", "Requests", "Service", "name"',
                                      '["HelloName", "Requests", "Service", "name"'), "dashboard_metrics"),
    "dashboard shorthand row": (
        "monitoring", _edit_dashboard('["${MetricsNamespace}", "AttemptsTimeout"', '[".", "AttemptsTimeout"'),
        "dashboard_metrics"),
    "dashboard name with a dot": (
        "monitoring", lambda d: d["Resources"]["Dashboard"]["Properties"].update(
            DashboardName={"Fn::Sub": "${EnvironmentName}.${AWS::Region}"}), "dashboard_metrics"),
    "alarm on a metric hello does not emit": (
        "monitoring", lambda d: _alarm(d, "HelloEjectionsAlarm").update(MetricName="Ejected"), "alarm_metrics"),
    "alarm on the services' metrics in the bare prefix": (
        "monitoring", lambda d: _alarm(d, "HelloNoEndpointsAlarm").update(Namespace="HelloName"), "alarm_metrics"),
    "alarm on a task count in AWS/ECS, which has none": (
        "monitoring", lambda d: _alarm(d, "NameTasksBelowDesiredAlarm")["Metrics"][1]["MetricStat"]["Metric"].update(
            Namespace="AWS/ECS"), "alarm_metrics"),
    "metric math alarm with two queries returning data": (
        "monitoring", lambda d: _alarm(d, "Target5xxRateAlarm")["Metrics"][1].update(ReturnData=True), "alarm_metrics"),
    "alarm with both a statistic and a percentile": (
        "monitoring", lambda d: _alarm(d, "TargetResponseTimeP99Alarm").update(Statistic="Average"), "alarm_metrics"),
    "alarm with a period of 45 seconds": (
        "monitoring", lambda d: _alarm(d, "HelloNoEndpointsAlarm").update(Period=45), "alarm_metrics"),
    "stack name pattern lets an apostrophe through": (
        "hello", lambda d: d["Parameters"]["EnvironmentName"].update(AllowedPattern="^.+$"),
        "ec2_description_substitutions"),
}


@pytest.mark.parametrize("case", sorted(OLD_DEFECTS))
def test_old_defect_in_real_template_fails(case):
    name, mutate, check = OLD_DEFECTS[case]
    assert deploy_checks.TEMPLATE_CHECKS[check](_broken(name, mutate)) != []


def test_parameter_the_parent_does_not_pass_down_fails():
    parent = copy.deepcopy(template("parent"))
    del parent["Resources"]["NameStack"]["Properties"]["Parameters"]["TaskSize"]
    text = "scripts/infra-deploy NameTaskSize=512/1024"
    assert deploy_checks.documented_parameters_reachable(text, parent, children()) != []


def _stacks(parent: dict) -> dict[str, tuple[str, dict]]:
    return {logical_id: (props["TemplateURL"].removesuffix(".yml"), props.get("Parameters", {}))
            for logical_id, props in deploy_checks.resources(parent, "AWS::CloudFormation::Stack")}


def _unpassed(parent: dict) -> list[str]:
    """Parameters of a nested template that parent.yml does not pass: the nested stack would
    silently keep the parameter's default (DiscoveryMode dns, RoutingPolicy MULTIVALUE) whatever
    the parent was given."""
    return [f"{logical_id}: {name}" for logical_id, (child, passed) in _stacks(parent).items()
            for name in template(child)["Parameters"] if name not in passed]


def test_parent_passes_every_nested_parameter():
    assert _unpassed(template("parent")) == []


@pytest.mark.parametrize("stack, name", [("HelloStack", "DiscoveryMode"), ("NameStack", "RoutingPolicy")])
def test_nested_parameter_the_parent_does_not_pass_fails(stack, name):
    parent = copy.deepcopy(template("parent"))
    del parent["Resources"][stack]["Properties"]["Parameters"][name]
    assert _unpassed(parent) == [f"{stack}: {name}"]


@pytest.mark.parametrize("path, old, new", [
    # The key policy's and the role's Logs hosts as they were, written for one partition.
    ("infra/cluster.yml", 'Service: !Sub "logs.${AWS::Region}.${AWS::URLSuffix}"',
     'Service: !Sub "logs.${AWS::Region}.amazonaws.com"'),
    ("infra/cluster.yml", 'kms:ViaService: !Sub "logs.${AWS::Region}.${AWS::URLSuffix}"',
     'kms:ViaService: !Sub "logs.${AWS::Region}.amazonaws.com"'),
    # A literal that is right in every partition, without the comment that says so.
    ("infra/hello.yml", "Service: ecs-tasks.amazonaws.com  # the same in every partition (see above)",
     "Service: ecs-tasks.amazonaws.com"),
])
def test_partition_literal_put_back_fails(path, old, new):
    text = (ROOT / path).read_text(encoding="utf-8")
    assert old in text
    assert deploy_checks.partition_dns_suffix(text.replace(old, new)) != []


def test_registry_host_written_in_a_script_fails():
    # scripts/infra-lib.sh once built the registry host for the commercial partition only.
    assert deploy_checks.partition_dns_suffix('  REGISTRY="$ACCOUNT.dkr.ecr.$REGION.amazonaws.com"\n') != []
