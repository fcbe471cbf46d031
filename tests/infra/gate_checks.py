"""The gate's verdicts on two linters' runs: whether cfn-lint linted to the end and what it
found, and whether checkov read every resource of the templates and what it found.

A linter that crashes, is misused or reads nothing must fail the gate, not pass it for want
of findings: cfn-lint's exit code says whether it ran to the end, checkov's does not.
scripts/infra-check runs both verdicts on the real runs; tests/infra/test_gate_checks.py runs
them on a cfn-lint that crashes and a checkov that reads an empty directory or a template it
cannot parse.

    python gate_checks.py cfn-lint EXIT_CODE OUTPUT_FILE
    python gate_checks.py checkov REPORT_JSON TEMPLATE...

print the verdict's lines (the first one a summary) and exit 0 when it passes, 1 when not.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conftest import load


@dataclass
class Verdict:
    """Whether a run passes, a one-line summary, and the lines that explain it."""

    passed: bool
    summary: str
    details: list[str] = field(default_factory=list)


# --- cfn-lint -----------------------------------------------------------------------------

# cfn-lint's exit code is a bit set, one bit per severity found, OR-ed: 2 errors, 4 warnings,
# 8 informational, 0 nothing found ("Exit Codes",
# https://github.com/aws-cloudformation/cfn-lint#exit-codes). Anything else is not a lint
# result: 1 is an unhandled exception, a bad command line or a bad configuration file
# (src/cfnlint/runner/cli.py, main()), and a code whose bits disagree with the findings printed
# means the output is not what was linted.
SEVERITY_BITS = {"E": 2, "W": 4, "I": 8}

# `--format parseable`: path:line:column:end line:end column:rule:message.
PARSEABLE = re.compile(r"^.*:\d+:\d+:\d+:\d+:(?P<rule>[EWI])\d{4}:", re.MULTILINE)


def cfn_lint_verdict(exit_code: int, output: str) -> Verdict:
    """The verdict on a cfn-lint run with `--format parseable` that exited `exit_code` and
    printed `output`: passes only when it ran to the end and found nothing."""
    counts = {severity: 0 for severity in SEVERITY_BITS}
    for finding in PARSEABLE.finditer(output):
        counts[finding["rule"]] += 1
    found = f"{counts['E']} errors, {counts['W']} warnings, {counts['I']} informational"
    expected = 0
    for severity, bit in SEVERITY_BITS.items():
        if counts[severity]:
            expected |= bit
    if exit_code != expected:
        return Verdict(False, f"did not lint to the end: exit {exit_code}, and {found} "
                              f"printed (exit {expected} expected)")
    return Verdict(expected == 0, found)


# --- checkov ------------------------------------------------------------------------------

def declared_resources(templates: list[Path]) -> int:
    """Resources the templates declare, counted from the templates themselves."""
    return sum(len(load(template).get("Resources") or {}) for template in templates)


def checkov_verdict(report: dict | list, templates: list[Path]) -> Verdict:
    """The verdict on checkov's `--output json` report of a scan meant to cover `templates`:
    passes only when every template parsed, checkov read as many resources as they declare,
    ran some checks, and none failed.

    checkov exits 0 whenever no check fails ("Hard and soft fail",
    https://www.checkov.io/2.Basics/Hard%20and%20soft%20fail.html): a template it cannot
    parse is left out, and a directory with no template is a pass, so its exit code is not
    enough."""
    # A list when several frameworks ran; one report otherwise; a bare summary when the scan
    # found no file at all.
    if isinstance(report, list):
        report = next((r for r in report if r.get("check_type") == "cloudformation"), {})
    summary = report.get("summary", report)
    results = report.get("results", {})
    passed, failed = summary.get("passed", 0), summary.get("failed", 0)
    read, declared = summary.get("resource_count", 0), declared_resources(templates)
    text = (f"{passed} passed, {failed} failed, {summary.get('skipped', 0)} skipped, "
            f"{read} resources read")
    details = [f"FAILED {c['check_id']} {c['resource']} {c['file_path']}: {c['check_name']}"
               for c in results.get("failed_checks", [])]
    details += [f"skipped {c['check_id']} {c['resource']}: "
                f"{c['check_result'].get('suppress_comment', '')}"
                for c in results.get("skipped_checks", [])]
    problems = [f"not parsed: {path}" for path in results.get("parsing_errors", [])]
    if summary.get("parsing_errors") and not problems:
        problems.append(f"{summary['parsing_errors']} templates not parsed")
    if read != declared:
        problems.append(f"the {len(templates)} templates declare {declared}")
    if passed + failed == 0:
        problems.append("ran no check")
    return Verdict(not problems and failed == 0, "; ".join([text, *problems]), details)


# --- command line -------------------------------------------------------------------------

def main(args: list[str]) -> int:
    if len(args) == 3 and args[0] == "cfn-lint":
        verdict = cfn_lint_verdict(int(args[1]), Path(args[2]).read_text(encoding="utf-8"))
    elif len(args) >= 3 and args[0] == "checkov":
        try:
            report = json.loads(Path(args[1]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"no report from checkov: {err}")
            return 1
        verdict = checkov_verdict(report, [Path(template) for template in args[2:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(verdict.summary)
    for line in verdict.details:
        print(f"  {line}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
