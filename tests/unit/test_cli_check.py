"""`cellgate check` on every broken tag map of the corpus: the exact FILE:LINE:COL lines, exit 2, no traceback."""

from __future__ import annotations

import os

import pytest

from gateway.cli import EXIT_CONFIG_ERROR, main
from tests.support.tagmap import ERROR_CASES, ErrorCase, error_cases


@pytest.mark.parametrize("case", error_cases(), ids=lambda case: case.name)
def test_check_reports_corpus_case_and_exits_2(
    case: ErrorCase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [key for key in os.environ if key.startswith("CELLGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(ERROR_CASES / case.name)
    with pytest.raises(SystemExit) as stopped:
        main(["check", "-c", "tagmap.yaml"])
    assert stopped.value.code == EXIT_CONFIG_ERROR
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert lines[:-1] == case.expected
    assert lines[-1] == f"tagmap.yaml: {len(case.expected)} problem(s); nothing started"
    assert "Traceback" not in out.err + out.out
