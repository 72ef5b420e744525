"""``mixdesk doctor``: print the health report; exit 0 when MixDesk can run."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from mixdesk.commands.common import print_json
from mixdesk.core.onboarding.doctor import FAIL, WARN, run_checks

_MARK = {"ok": "ok  ", WARN: "WARN", FAIL: "FAIL"}


def run_doctor(args: argparse.Namespace) -> int:
    """Run the doctor command; returns the exit status."""
    report = run_checks()
    if args.json:
        print_json({"ok": report.ok, "checks": [asdict(c) for c in report.checks]})
    else:
        for check in report.checks:
            sys.stdout.write(f"[{_MARK[check.status]}] {check.name:<12} {check.detail}\n")
            if check.fix:
                sys.stdout.write(f"       fix: {check.fix}\n")
        verdict = (
            "MixDesk can run here." if report.ok else "MixDesk cannot run here yet: see FAIL above."
        )
        sys.stdout.write(verdict + "\n")
    return 0 if report.ok else 1
