"""Goals a benchmark promises, judged at the end of a run: the exit status says if one was missed.

A figure is compared with its goal; ``noise`` is how far the figure moves between runs of
the same code on these machines. Past the goal but within the noise it is reported and
does not fail (the run cannot tell a regression from a busy neighbour); further than that,
the benchmark exits with status 1. Speed goals are ratios against a reference measured in
the same run, medians of interleaved rounds, so machine-wide noise cancels out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, TextIO

OK, WITHIN_NOISE, MISSED = "ok", "within noise", "MISSED"


@dataclass(frozen=True)
class Goal:
    """One figure and what it must be."""

    key: str  # for --goal KEY=VALUE and the JSON
    what: str  # as a person reads it
    value: float
    goal: float
    higher_is_better: bool
    unit: str = ""
    noise: float = 0.0  # in the figure's unit

    @property
    def limit(self) -> float:
        """The figure past which the run fails: the goal moved by the noise."""
        return self.goal - self.noise if self.higher_is_better else self.goal + self.noise

    @property
    def verdict(self) -> str:
        """ok, within noise, or MISSED."""
        better = self.value >= self.goal if self.higher_is_better else self.value <= self.goal
        if better:
            return OK
        tolerated = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return WITHIN_NOISE if tolerated else MISSED

    def line(self) -> str:
        """``[ok] longest GUI stall: 9 ms (goal < 50 ms)``."""
        sign = ">=" if self.higher_is_better else "<="
        noise = (
            f", fails {'below' if self.higher_is_better else 'above'} {self.limit:g}"
            if self.noise
            else ""
        )
        return (
            f"[{self.verdict}] {self.what}: {self.value:g}{self.unit} "
            f"(goal {sign} {self.goal:g}{self.unit}{noise})"
        )


def add_goal_arguments(parser: argparse.ArgumentParser) -> None:
    """``--goal KEY=VALUE``: judge against another goal (a test makes one impossible)."""
    parser.add_argument(
        "--goal",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace a goal, e.g. --goal stall_ms=0 (repeatable)",
    )


def judge(
    goals: list[Goal], overrides: list[str], *, out: TextIO = sys.stderr
) -> tuple[list[dict[str, Any]], int]:
    """Apply ``--goal`` overrides, print one line per goal, return (JSON rows, exit status)."""
    wanted = dict(item.split("=", 1) for item in overrides)
    unknown = set(wanted) - {g.key for g in goals}
    if unknown:
        raise SystemExit(
            f"unknown goal {', '.join(sorted(unknown))}; known: {', '.join(g.key for g in goals)}"
        )
    judged = [replace(g, goal=float(wanted[g.key])) if g.key in wanted else g for g in goals]
    for g in judged:
        out.write(g.line() + "\n")
    rows = [{**asdict(g), "limit": g.limit, "verdict": g.verdict} for g in judged]
    return rows, int(any(g.verdict == MISSED for g in judged))
