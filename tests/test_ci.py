"""CI cannot hide a tier: with CI=true a skip fails the run, except in the real-Raspberry-Pi tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import CI_SKIP, ROOT

TINY_TESTS = '''
import pytest


@pytest.fixture
def reader():
    pytest.skip("needs pcscd")


def test_skips_itself():
    pytest.skip("needs chromium")


@pytest.mark.skipif(True, reason="needs gdal-bin")
def test_skipif():
    pass


def test_fixture_skips(reader):
    pass


@pytest.mark.pi
@pytest.mark.skipif(True, reason="set NAKHON_TEST_PI=1 on a Raspberry Pi")
def test_on_a_pi():
    pass


@pytest.mark.parametrize("backend", ["mock", pytest.param("pi", marks=[pytest.mark.pi, pytest.mark.skip("no Pi")])])
def test_both_backends(backend):
    pass


@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False


def test_passes():
    pass
'''

SKIPPING_MODULE = '''
import pytest

pytest.importorskip("no_such_module_for_nakhon")


def test_never_collected():
    pass
'''


def _run(tmp_path: Path, ci: str | None) -> tuple[int, dict[str, str], str]:
    """Run pytest with the project's conftest on the tiny tests; (exit status, outcome by test id)."""
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    (tmp_path / "test_importorskip.py").write_text(SKIPPING_MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    pi: needs a real Raspberry Pi\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    report = tmp_path / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-q", "--strict-markers", "--continue-on-collection-errors", f"--junitxml={report}",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):  # noqa: S314 (our own pytest's report)
        children = [child for child in case if child.tag in {"failure", "error", "skipped"}]
        outcome = children[0].tag if children else "passed"
        if outcome == "skipped" and children[0].get("type") == "pytest.xfail":
            outcome = "xfailed"
        outcomes[case.get("name", "")] = outcome
    return done.returncode, outcomes, done.stdout


def test_on_ci_a_skip_outside_the_pi_tier_fails_the_run(tmp_path: Path) -> None:
    status, outcomes, output = _run(tmp_path, "true")
    assert status == 1, output
    assert outcomes == {
        "test_skips_itself": "failure",
        "test_skipif": "error",  # a skip mark acts at setup
        "test_fixture_skips": "error",
        "test_on_a_pi": "skipped",
        "test_both_backends[mock]": "passed",
        "test_both_backends[pi]": "skipped",
        "test_known_bug": "xfailed",
        "test_passes": "passed",
        "test_importorskip": "error",
    }, output
    assert f"{CI_SKIP}: Skipped: needs chromium" in (tmp_path / "report.xml").read_text()


@pytest.mark.parametrize("ci", [None, "false"])
def test_off_ci_the_same_skips_are_skips(tmp_path: Path, ci: str | None) -> None:
    status, outcomes, output = _run(tmp_path, ci)
    assert status == 0, output
    assert sorted(name for name, outcome in outcomes.items() if outcome == "skipped") == [
        "test_both_backends[pi]", "test_fixture_skips", "test_importorskip", "test_on_a_pi", "test_skipif",
        "test_skips_itself"], output
    assert outcomes["test_passes"] == "passed" and outcomes["test_known_bug"] == "xfailed"
    assert CI_SKIP not in (tmp_path / "report.xml").read_text()
