"""The test suite's time, from the log of a timed CI run.

    bash .ci/run 2>&1 | tee ci.log          # install, lint, `make test` (README's command)
    python benchmarks/suite_timing.py ci.log --wall SECONDS --commit SHA

reads pytest's summary line and its "slowest 30 durations" table (``--durations=30`` in
pyproject.toml) and the install's ``time`` output, writes ``benchmarks/results/suite_timing.md``
and puts the same text in ``docs/development.md`` between its ``suite-timing`` markers (a test
checks the two agree). ``--wall`` is the whole CI run's wall time, measured outside it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "suite_timing.md"
DOC = REPO / "docs" / "development.md"
START, END = "<!-- suite-timing:start -->", "<!-- suite-timing:end -->"
BUDGET_MIN = 40  # make test on the 2-core CI machine

_SUMMARY = re.compile(r"=+ (?P<counts>.*?) in (?P<seconds>[\d.]+)s(?: \([\d:]+\))? =+\s*$")
_DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?P<when>setup|call|teardown)\s+(?P<test>\S+)")
_REAL = re.compile(r"^real\s+(?:(?P<m>\d+)m)?(?P<s>[\d.]+)s", re.M)


def parse(log: str) -> dict:
    """Counts, seconds and the slowest steps of the pytest run in ``log``."""
    summary = None
    for line in log.splitlines():
        m = _SUMMARY.match(line.strip())
        if m and ("passed" in m["counts"] or "failed" in m["counts"]):
            summary = m
    if summary is None:
        raise SystemExit("no pytest summary line ('N passed ... in S s') in the log")
    slow = []
    table = log.split("slowest 30 durations", 1)
    if len(table) == 2:
        for line in table[1].splitlines()[1:]:
            m = _DURATION.match(line.strip())
            if m:
                slow.append((float(m["seconds"]), m["when"], m["test"]))
            elif slow and line.strip() and not line.startswith("("):
                break
    install = _REAL.search(log)
    return {
        "counts": summary["counts"],
        "seconds": float(summary["seconds"]),
        "slowest": slow,
        "install_s": (int(install["m"] or 0) * 60 + float(install["s"])) if install else None,
    }


HOW = "`make test` (README's test command) in `bash .ci/run` on a clean clone"


def render(run: dict, wall_s: float | None, commit: str, machine: str, how: str = HOW) -> str:
    minutes = run["seconds"] / 60
    verdict = "within" if minutes < BUDGET_MIN else "over"
    lines = [
        f"{how} at {commit}, {machine}: **{run['counts']} in {run['seconds']:.1f} s "
        f"({minutes:.1f} min)**, {verdict} the {BUDGET_MIN}-minute budget.",
    ]
    extra = []
    if run["install_s"] is not None:
        extra.append(f"`make install` took {run['install_s']:.0f} s")
    if wall_s is not None:
        extra.append(f"the whole CI run (apt, install, lint, tests) took {wall_s / 60:.1f} min")
    if extra:
        said = "; ".join(extra)
        lines[0] += f" {said[0].upper()}{said[1:]}."
    lines += [
        "",
        f"The {len(run['slowest'])} slowest steps (a module's shared workflow is the `setup` of "
        "its first test):",
        "",
        "| seconds | step | test |",
        "|---:|---|---|",
    ]
    for seconds, when, test in run["slowest"]:
        lines.append(f"| {seconds:.1f} | {when} | `{test}` |")
    share = sum(s for s, _, _ in run["slowest"]) / run["seconds"] if run["seconds"] else 0
    lines += ["", f"These {len(run['slowest'])} steps are {100 * share:.0f}% of the suite's time."]
    return "\n".join(lines) + "\n"


def place(doc: str, text: str) -> str:
    """``doc`` with ``text`` between the markers."""
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {START} ... {END} block")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{text}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path, help="output of `bash .ci/run`")
    ap.add_argument("--wall", type=float, help="seconds the whole CI run took")
    ap.add_argument("--commit", required=True, help="the commit the run tested")
    ap.add_argument("--machine", default="2 cores, 24 GB, no GPU")
    ap.add_argument("--how", default=HOW, help="how the log was made, as the text says it")
    args = ap.parse_args(argv)
    text = render(parse(args.log.read_text()), args.wall, args.commit, args.machine, args.how)
    OUT.write_text("# Test suite time\n\n" + text)
    DOC.write_text(place(DOC.read_text(), text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
