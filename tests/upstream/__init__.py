"""The frameworks' own test suites, run against our adapters (no upstream test edited).

Each suite is downloaded as a pinned sdist with ``pip download --no-binary :all:`` into
``.cache/upstream/`` (git-ignored; reused by later runs), unpacked, and run in a subprocess
against a private redis-server by its test module, ``tests/test_upstream_<suite>.py``
(marker ``upstream``). What aims a suite's backend-generic tests at our adapter lives here,
in our files only: subclasses of the suite's generic test classes, settings, a pytest
plugin (``pythonpath/``), a suite's runner helper (``suite_<name>.py``); no upstream file
is edited. :func:`run_pytest` and :func:`run_unittest` count the outcome.

Excluded tests are listed, each with its reason, in ``tests/upstream/excluded.txt``
(``<suite> | <test id> | <reason>``); the README shows the counts per suite, and
:func:`check` asserts that they are the ones measured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

__all__ = ["CACHE", "EXCLUDED", "ROOT", "SUITES", "Outcome", "check", "clean_environ",
           "excluded", "fetch", "readme_counts", "run_pytest", "run_unittest"]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "upstream"
EXCLUDED = Path(__file__).with_name("excluded.txt")

#: suite name -> the pinned requirement whose sdist holds its tests.
SUITES = {
    "cachelib": "cachelib==0.17.0",
    "flask-caching": "Flask-Caching==2.5.1",
    "django": "Django==5.2.19",
    "dogpile.cache": "dogpile.cache==1.5.0",
}


@dataclasses.dataclass
class Outcome:
    """What one run of a suite counted."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    deselected: int = 0
    output: str = ""

    def report(self) -> str:
        """The counts and the end of the output, for an assertion message."""
        return (f"passed {self.passed}, failed {self.failed}, errors {self.errors}, "
                f"skipped {self.skipped}, deselected {self.deselected}\n"
                f"{self.output[-6000:]}")


def fetch(requirement: str) -> Path:
    """The unpacked source tree of ``requirement``'s sdist (downloaded once, then reused).

    Raises:
        RuntimeError: pip could not download it (the message has pip's output).
    """
    name, _, version = requirement.partition("==")
    sdists = CACHE / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[-_.]+", "_", f"{name}-{version}").lower()

    def downloaded() -> list[Path]:
        return [path for path in sdists.glob("*.tar.gz")
                if re.sub(r"[-_.]+", "_", path.name).lower() == f"{stem}_tar_gz"]

    found = downloaded()
    if not found:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", "-q", "-d", str(sdists), requirement],
            capture_output=True, text=True, check=False)
        found = downloaded()
        if result.returncode != 0 or not found:
            raise RuntimeError(f"pip download {requirement} failed:\n{result.stdout}"
                               f"{result.stderr}")
    sdist = found[0]
    source = CACHE / "src" / sdist.name.removesuffix(".tar.gz")
    if not (source / ".unpacked").exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(CACHE / "src", filter="data")
        (source / ".unpacked").touch()
    return source


def excluded(suite: str) -> dict[str, str]:
    """The excluded tests of ``suite``: test id -> why."""
    reasons: dict[str, str] = {}
    for number, line in enumerate(EXCLUDED.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != 3 or not all(fields):
            raise ValueError(f"{EXCLUDED.name}:{number}: expected 'suite | test id | reason'")
        if fields[0] == suite:
            reasons[fields[1]] = fields[2]
    return reasons


_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected)")


def run_pytest(suite: str, cwd: Path, args: list[str], env: dict[str, str],
               timeout: float = 600) -> Outcome:
    """Run pytest in ``cwd`` (the unpacked sdist) with ``args``, the suite's excluded tests
    deselected, and count the outcome from pytest's summary line."""
    deselect = [option for test_id in excluded(suite) for option in ("--deselect", test_id)]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", *deselect, *args]
    result = subprocess.run(command, cwd=cwd, env={**clean_environ(), **env},
                            capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    outcome = Outcome(output=output)
    for count, kind in _SUMMARY.findall(summary):
        field = "errors" if kind.startswith("error") else kind
        setattr(outcome, field, int(count))
    if result.returncode not in (0, 1) and not (outcome.failed or outcome.errors):
        outcome.errors += 1  # pytest itself failed (usage, collection, a crash)
    return outcome


def clean_environ() -> dict[str, str]:
    """This process's environment without our settings (``DRAGONFLY_*``, ``CACHE_*``): a
    developer's own must not aim an upstream run at another server or change its config."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("DRAGONFLY_", "CACHE_"))}


_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_VERDICT = re.compile(r"^(OK|FAILED)(?: \((.*)\))?\s*$", re.MULTILINE)


def run_unittest(command: list[str], cwd: Path, env: dict[str, str], *, deselected: int = 0,
                 timeout: float = 600) -> Outcome:
    """Run a unittest-based runner (e.g. Django's ``runtests.py``) and count the outcome
    from unittest's summary (``Ran N tests`` and ``OK (skipped=K)`` / ``FAILED (...)``).

    Args:
        command: the whole command line.
        cwd: where to run it.
        env: the whole environment of the subprocess.
        deselected: how many tests the caller left out (for the report).
        timeout: seconds before the run is killed.
    """
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    output = result.stdout + result.stderr
    outcome = Outcome(output=output, deselected=deselected)
    ran, verdicts = _RAN.findall(output), _VERDICT.findall(output)
    if not ran or not verdicts:
        outcome.errors = 1  # the runner did not get as far as a summary
        return outcome
    counts = dict.fromkeys(("failures", "errors", "skipped", "expected failures",
                            "unexpected successes"), 0)
    for part in filter(None, (item.strip() for item in verdicts[-1][1].split(","))):
        name, _, count = part.partition("=")
        counts[name] = int(count)
    outcome.failed = counts["failures"] + counts["unexpected successes"]
    outcome.errors = counts["errors"]
    outcome.skipped = counts["skipped"] + counts["expected failures"]
    outcome.passed = int(ran[-1]) - outcome.failed - outcome.errors - outcome.skipped
    if result.returncode != 0 and not (outcome.failed or outcome.errors):
        outcome.errors += 1  # the runner failed after its tests (teardown, a crash)
    return outcome


_README_ROW = re.compile(r"^\| `([\w.-]+)` \| ([\w.]+) \| (\d+) \| (\d+) \|", re.MULTILINE)


def readme_counts() -> dict[str, tuple[str, int, int]]:
    """The README's table of upstream suites: suite -> (version, passed, excluded)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return {suite: (version, int(passed), int(skipped))
            for suite, version, passed, skipped in _README_ROW.findall(text)}


def check(suite: str, outcome: Outcome) -> None:
    """The suite passed with nothing failing, and the README states its counts truly.

    Raises:
        AssertionError: with the counts and the end of the suite's output.
    """
    assert outcome.failed == 0 and outcome.errors == 0 and outcome.passed > 0, \
        outcome.report()
    version = SUITES[suite].partition("==")[2]
    stated = readme_counts().get(suite)
    measured = (version, outcome.passed, len(excluded(suite)))
    assert stated == measured, (
        f"README's row for {suite} says (version, passed, excluded) = {stated}, this run "
        f"measured {measured}: update the table in README.md")
