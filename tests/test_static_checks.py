"""The static checks `make test` runs before the tests: the mypy baseline only shrinks,
and pip-audit fails on a known vulnerability. Each is run with a stand-in for the tool
whose output it reads, so both ways out are shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stand_in(tmp_path: Path, name: str, output: str, exit_code: int) -> Path:
    path = tmp_path / name
    (tmp_path / f"{name}.out").write_text(output)
    path.write_text(f"#!/bin/sh\ncat '{tmp_path / f'{name}.out'}'\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


def run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_mypy_baseline_only_shrinks(tmp_path: Path) -> None:
    error = 'cmw/x.py:12: error: Incompatible return value type (got "int", expected "str")  [return-value]'
    mypy = stand_in(tmp_path, "mypy", error + "\nFound 1 error in 1 file\n", 1)
    baseline = tmp_path / "baseline.txt"

    baseline.write_text("# none\n")
    new = run("mypy-baseline", MYPY=str(mypy), MYPY_BASELINE=str(baseline))
    assert new.returncode == 1 and "new mypy error: cmw/x.py: error: Incompatible return" in new.stdout

    # known (at another line: moving code is not a new error)
    baseline.write_text(error.replace(":12:", ":") + "\n")
    known = run("mypy-baseline", MYPY=str(mypy), MYPY_BASELINE=str(baseline))
    assert known.returncode == 0 and "1 errors, 1 in the baseline" in known.stdout

    # fixed: the baseline must lose the line
    clean = stand_in(tmp_path, "mypy-clean", "Success: no issues found in 3 source files\n", 0)
    fixed = run("mypy-baseline", MYPY=str(clean), MYPY_BASELINE=str(baseline))
    assert fixed.returncode == 1 and "fixed, remove it from baseline.txt" in fixed.stdout


def test_pip_audit_fails_on_a_known_vulnerability(tmp_path: Path) -> None:
    report = (
        '{"dependencies": [{"name": "flask", "version": "0.12", "vulns": [{"id": "PYSEC-2018-66",'
        ' "fix_versions": ["0.12.3"], "aliases": [], "description": "x"}]},'
        ' {"name": "kombu", "version": "5.5.0", "vulns": []},'
        ' {"name": "odd", "skip_reason": "Dependency not found on PyPI"}], "fixes": []}'
    )
    vulnerable = run("audit-dependencies", PIP_AUDIT=str(stand_in(tmp_path, "pip-audit", report, 1)))
    assert vulnerable.returncode == 1
    assert "VULNERABLE flask==0.12: PYSEC-2018-66 (fixed in 0.12.3)" in vulnerable.stdout
    assert (
        "3 locked dependencies, 2 audited, 1 with known vulnerabilities, 1 not audited" in vulnerable.stdout
    )

    clean = report.replace('"vulns": [{"id": "PYSEC-2018-66", "fix_versions": ["0.12.3"], "aliases": [], '
                           '"description": "x"}]', '"vulns": []')  # fmt: skip
    passed = run("audit-dependencies", PIP_AUDIT=str(stand_in(tmp_path, "pip-audit-clean", clean, 0)))
    assert passed.returncode == 0 and "0 with known vulnerabilities" in passed.stdout
