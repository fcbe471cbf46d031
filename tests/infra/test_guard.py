"""cfn-guard: the project's rules pass on the real templates, every rule is exercised by
them, and every rule has a fixture that fails it (and only it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, INFRA, TEMPLATE_NAMES, guard, load, rule_names

GUARD_FIXTURES = FIXTURES / "guard"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_real_template_passes_every_rule(name):
    report = guard(INFRA / f"{name}.yml")
    assert report["failed_rules"] == [], f"{name}.yml breaks {report['failed_rules']}"


def test_every_rule_applies_to_some_real_template():
    # A rule that is skipped everywhere checks nothing.
    exercised = set()
    for name in TEMPLATE_NAMES:
        exercised |= set(guard(INFRA / f"{name}.yml")["compliant"])
    assert set(rule_names()) - exercised == set()


def test_every_rule_has_a_failing_fixture_and_every_fixture_a_rule():
    fixtures = {p.stem for p in GUARD_FIXTURES.glob("*.yml")}
    assert fixtures == set(rule_names())


@pytest.mark.parametrize("rule", rule_names())
def test_fixture_fails_exactly_its_rule(rule):
    report = guard(GUARD_FIXTURES / f"{rule}.yml")
    assert report["status"] == "FAIL"
    assert report["failed_rules"] == [rule]


def _mutated(tmp_path: Path, name: str, mutate) -> Path:
    doc = copy.deepcopy(load(INFRA / f"{name}.yml"))
    mutate(doc)
    out = tmp_path / f"{name}.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def _name_ingress(doc):
    return doc["Resources"]["NameServiceIngressFromHello"]["Properties"]


def _name_awsvpc(doc):
    return doc["Resources"]["Service"]["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]


BROKEN_REAL_TEMPLATES = {
    # The original sample's defects, put back into the real templates one at a time.
    "all-protocols ingress to name": (
        "hello", lambda d: _name_ingress(d).update(IpProtocol="-1"), "security_group_rules_tcp_only"),
    "ttl of 0": (
        "name", lambda d: d["Parameters"]["RecordTtl"]["AllowedValues"].insert(0, 0), "discovery_ttl_bounded"),
    "public ip on name's tasks": (
        "name", lambda d: _name_awsvpc(d).update(AssignPublicIp="ENABLED"), "ecs_tasks_no_public_ip"),
    "no custom health check": (
        "name", lambda d: d["Resources"]["DiscoveryService"]["Properties"].pop("HealthCheckCustomConfig"),
        "discovery_multivalue_ecs_health"),
    "routing policy WEIGHTED by default": (
        "name", lambda d: d["Parameters"]["RoutingPolicy"].update(Default="WEIGHTED"),
        "discovery_multivalue_ecs_health"),
    "log group without retention": (
        "name", lambda d: d["Resources"]["LogGroup"]["Properties"].pop("RetentionInDays"),
        "log_groups_retention_set"),
    "name open to a cidr": (
        "hello", lambda d: _name_ingress(d).update(CidrIp="10.0.0.0/16"), "name_ingress_only_from_hello"),
    # The first deploy's failure: apostrophes EC2 rejects, in each place a description goes.
    "apostrophe in a standalone ingress description": (
        "hello", lambda d: _name_ingress(d).update(Description="From hello tasks on name's port"),
        "ec2_descriptions_charset"),
    "apostrophe in a standalone egress description": (
        "hello", lambda d: d["Resources"]["HelloEgressToName"]["Properties"].update(Description="To name's tasks"),
        "ec2_descriptions_charset"),
    "apostrophe in an inline egress description": (
        "name", lambda d: d["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupEgress"][0].update(
            Description="HTTPS to AWS's APIs"), "ec2_descriptions_charset"),
    "apostrophe in a substituted group description": (
        "name", lambda d: d["Resources"]["SecurityGroup"]["Properties"].update(
            GroupDescription={"Fn::Sub": "${EnvironmentName} name's tasks"}), "ec2_descriptions_charset"),
    "alarm that leaves missing data to the default": (
        "monitoring", lambda d: d["Resources"]["Target5xxRateAlarm"]["Properties"].pop("TreatMissingData"),
        "cloudwatch_alarms_treat_missing_data"),
    "non-ASCII group description": (
        "hello", lambda d: d["Resources"]["LoadBalancerSecurityGroup"]["Properties"].update(
            GroupDescription="Load balancer \u2013 HTTP"), "ec2_descriptions_charset"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_REAL_TEMPLATES))
def test_sample_defect_in_real_template_fails(case, tmp_path):
    name, mutate, rule = BROKEN_REAL_TEMPLATES[case]
    report = guard(_mutated(tmp_path, name, mutate))
    assert rule in report["failed_rules"]
