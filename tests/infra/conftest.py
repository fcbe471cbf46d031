"""Shared helpers for the infrastructure tests: paths, a CloudFormation-aware YAML loader,
and a cfn-guard runner. Run through scripts/infra-check, which installs the tools."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
RULES = INFRA / "rules"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEMPLATE_NAMES = ("vpc", "cluster", "name", "hello", "monitoring", "parent")
GUARD = Path(os.environ.get("CFN_GUARD", ROOT / ".tools" / "bin" / "cfn-guard"))


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short forms (!Ref, !Sub, ...) into their long
    JSON forms, so tests see the same structure CloudFormation does."""


def _construct_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


@cache
def template(name: str) -> dict:
    """The parsed template infra/<name>.yml."""
    return load(INFRA / f"{name}.yml")


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def rule_names() -> list[str]:
    """Every `rule <name>` declared in infra/rules/*.guard."""
    names = []
    for path in sorted(RULES.glob("*.guard")):
        names += re.findall(r"^rule\s+(\w+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    return names


def guard(data: Path) -> dict:
    """Runs cfn-guard with the project's rules on one template; returns its JSON report
    (status, compliant, not_compliant, not_applicable)."""
    if not GUARD.exists():
        raise AssertionError(f"cfn-guard not found at {GUARD}: run scripts/infra-setup")
    proc = subprocess.run(
        [str(GUARD), "validate", "--rules", str(RULES), "--data", str(data),
         "--output-format", "json", "--show-summary", "none"],
        capture_output=True, text=True, check=False,
    )
    # 0: all rules pass or skip; 19: some rule failed; anything else: guard itself failed.
    assert proc.returncode in (0, 19), f"cfn-guard error ({proc.returncode}): {proc.stderr}"
    report = json.loads(proc.stdout)
    report["failed_rules"] = sorted({c["Rule"]["name"] for c in report["not_compliant"]})
    return report


def source(relative: str) -> str:
    """Text of a file of the Rust services, failing clearly when it does not exist."""
    path = ROOT / relative
    assert path.is_file(), f"{relative} is missing: the consistency tests read the services' defaults from it"
    return path.read_text(encoding="utf-8")


def rust_sources(*dirs: str) -> str:
    """All Rust source under the given directories, concatenated."""
    text = ""
    for d in dirs:
        base = ROOT / d
        assert base.is_dir(), f"{d}/ is missing"
        for path in sorted(base.rglob("*.rs")):
            text += path.read_text(encoding="utf-8") + "\n"
    return text
