"""docs/reliability.md's table of faults is checked against the tests: every test a row names
exists, and every test of the reliability suite has a row (so the list cannot drift from the code)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = {"R": "tests/test_reliability.py", "F": "tests/test_fuzz.py", "S": "tests/test_resume.py",
          "D": "tests/test_data_cli.py", "P": "tests/test_data_prepared.py", "C": "tests/test_config.py",
          "K": "tests/test_checksums.py", "U": "tests/test_recommend_cold.py", "Y": "tests/test_data_sanity.py"}
# every test in these files is a fault or bad input and must have a row
SUITE = ["tests/test_reliability.py", "tests/test_checksums.py", "tests/test_recommend_cold.py",
         "tests/test_data_sanity.py"]


def _table_refs() -> list[tuple[str, str]]:
    """(file, test name) for every test named in the table's last column."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text[text.index("## Faults and bad inputs tried"):]
    refs = []
    for row in section.splitlines():
        if not re.match(r"^\| \d+ \|", row):
            continue
        for item in row.rstrip(" |").rsplit("|", 1)[1].split(","):
            item = item.strip()
            m = re.match(r"^(?:([A-Z])|(tests/[\w/]+\.py))::([\w]+)", item)
            if m:
                refs.append((PREFIX[m.group(1)] if m.group(1) else m.group(2), m.group(3)))
    return refs


def _tests_in(path: str) -> set[str]:
    return set(re.findall(r"^def (test_\w+)\(", (ROOT / path).read_text(), flags=re.M))


def test_every_named_test_exists():
    missing = [f"{f}::{name}" for f, name in _table_refs() if name not in _tests_in(f)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_reliability_test_has_a_row():
    listed = {(f, name) for f, name in _table_refs()}
    absent = [f"{f}::{t}" for f in SUITE if (ROOT / f).exists() for t in sorted(_tests_in(f))
              if (f, t) not in listed]
    assert not absent, f"tests of the reliability suite without a row in docs/reliability.md: {absent}"
