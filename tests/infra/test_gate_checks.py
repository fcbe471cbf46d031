"""The gate fails when a linter does not lint: a cfn-lint that crashes or is misused, and a
checkov that reads no template or cannot parse one, get a failing verdict from the functions
scripts/infra-check judges the real runs with (gate_checks.py). The linters are the real ones,
from scripts/infra-setup (or CFN_LINT and CHECKOV)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import INFRA, ROOT, TEMPLATE_NAMES
from gate_checks import cfn_lint_verdict, checkov_verdict

CFN_LINT = Path(os.environ.get("CFN_LINT", ROOT / ".venv" / "cfn-lint" / "bin" / "cfn-lint"))
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))
TEMPLATES = [INFRA / f"{name}.yml" for name in TEMPLATE_NAMES]


def tool(path: Path) -> str:
    if not path.exists():
        raise AssertionError(f"{path.name} not found at {path}: run scripts/infra-setup")
    return str(path)


def cfn_lint(*args: str) -> tuple[int, str]:
    """Runs cfn-lint as the gate does; returns its exit code and what it printed."""
    proc = subprocess.run([tool(CFN_LINT), "--include-checks", "I", "--format", "parseable",
                           *args], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout


def checkov(directory: Path) -> dict | list:
    """Runs checkov on `directory` as the gate does; returns its JSON report."""
    proc = subprocess.run([tool(CHECKOV), "--framework", "cloudformation", "--directory",
                           str(directory), "--skip-download", "--output", "json"],
                          capture_output=True, text=True, check=False)
    return json.loads(proc.stdout)


# --- cfn-lint -------------------------------------------------------------------------------

def test_a_cfn_lint_that_crashes_fails_the_gate(tmp_path):
    # Rules that cannot be imported: cfn-lint raises, prints a traceback and nothing else.
    code, output = cfn_lint("--append-rules", str(tmp_path / "no_such_rules"), "--",
                            str(INFRA / "vpc.yml"))

    verdict = cfn_lint_verdict(code, output)

    assert code == 1, output
    assert not verdict.passed
    assert "did not lint to the end: exit 1" in verdict.summary


def test_a_cfn_lint_with_a_bad_command_line_fails_the_gate():
    code, output = cfn_lint("--no-such-option", "--", str(INFRA / "vpc.yml"))

    assert code != 0
    assert not cfn_lint_verdict(code, output).passed


def test_a_cfn_lint_that_lints_a_broken_template_reports_its_error(tmp_path):
    template = tmp_path / "broken.yml"
    template.write_text("Resources:\n  A: [unclosed\n", encoding="utf-8")
    code, output = cfn_lint("--", str(template))

    verdict = cfn_lint_verdict(code, output)

    assert code == 2, output
    assert not verdict.passed
    assert verdict.summary.startswith("1 errors,"), verdict.summary


@pytest.mark.parametrize(("code", "output", "passed"), [
    (0, "", True),
    (2, "t.yml:1:1:1:2:E3012:bad\n", False),
    (12, "t.yml:1:1:1:2:W3005:w\nt.yml:2:1:2:2:I3011:i\n", False),
    # An exit code the findings do not account for: a run that did not finish.
    (2, "", False),
    (0, "t.yml:1:1:1:2:E3012:bad\n", False),
    (3, "t.yml:1:1:1:2:E3012:bad\n", False),
])
def test_the_exit_code_must_match_the_findings(code, output, passed):
    assert cfn_lint_verdict(code, output).passed is passed


# --- checkov --------------------------------------------------------------------------------

def test_a_checkov_that_reads_an_empty_directory_fails_the_gate(tmp_path):
    verdict = checkov_verdict(checkov(tmp_path), TEMPLATES)

    assert not verdict.passed
    assert "0 resources read; the 6 templates declare" in verdict.summary, verdict.summary
    assert "ran no check" in verdict.summary, verdict.summary


def test_a_template_checkov_cannot_parse_fails_the_gate(tmp_path):
    # Every template but one is read: checkov leaves the broken one out and exits 0.
    for template in TEMPLATES[1:]:
        shutil.copy(template, tmp_path)
    (tmp_path / TEMPLATES[0].name).write_text(
        TEMPLATES[0].read_text(encoding="utf-8") + "\n  Broken: [unclosed\n", encoding="utf-8")

    verdict = checkov_verdict(checkov(tmp_path), TEMPLATES)

    assert not verdict.passed
    assert f"/{TEMPLATES[0].name}" in verdict.summary.partition("not parsed: ")[2], verdict.summary
