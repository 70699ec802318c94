"""Summary of a mutmut run, per module, as a Markdown table to paste (`make mutation` prints it).

Reads the output of `mutmut results --all true` (one `<mutant name>: <status>` line per
mutant). A mutant counts as detected when a test failed (killed) or it made the tests run
past mutmut's time limit (timeout: a hang the suite's pytest-timeout would fail too); "no
tests" (no unit test reaches the code) and "survived" are not detected. Mutants not run
(not checked, e.g. outside MUTANTS=...) are left out. The survivors are listed after the
table; docs/notes/mutation-report.md says why each that stays is equivalent or harmless.

    python tests/mutation_summary.py build/mutation/results.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*(?P<name>\S+?)__mutmut_\d+: (?P<status>[a-z ]+)$")
DETECTED = ("killed", "timeout", "caught by type check")
COLUMNS = ("killed", "timeout", "survived", "no tests", "suspicious", "skipped", "segfault")


def module_of(name: str) -> str:
    """`textserve.core.batcher.xǁBatcherǁrun` -> `textserve.core.batcher`."""
    head = name.split("ǁ", 1)[0]
    return head.rsplit(".", 1)[0]


def summarise(lines: list[str]) -> tuple[dict[str, Counter[str]], list[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    undetected: list[str] = []
    for line in lines:
        match = LINE.match(line.rstrip())
        if not match or match["status"] == "not checked":
            continue
        status = match["status"]
        counts[module_of(match["name"])][status] += 1
        if status not in DETECTED:
            undetected.append(f"{line.strip()}")
    return counts, undetected


def table(counts: dict[str, Counter[str]]) -> str:
    rows = ["| module | tried | " + " | ".join(COLUMNS) + " | detected |", "|---" * (len(COLUMNS) + 3) + "|"]
    total: Counter[str] = Counter()
    for module in sorted(counts):
        total.update(counts[module])
        rows.append(_row(module, counts[module]))
    rows.append(_row("**all**", total))
    return "\n".join(rows)


def _row(label: str, count: Counter[str]) -> str:
    tried = sum(count.values())
    detected = sum(count[s] for s in DETECTED)
    share = f"{100 * detected / tried:.1f} %" if tried else "-"
    return f"| {label} | {tried} | " + " | ".join(str(count[c]) for c in COLUMNS) + f" | {share} |"


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else None
    lines = (source.read_text() if source else sys.stdin.read()).splitlines()
    counts, undetected = summarise(lines)
    print(table(counts))
    print(f"\nnot detected ({len(undetected)}):")
    for line in undetected:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
