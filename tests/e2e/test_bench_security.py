"""The benchmark's security row: opcua-20k over SignAndEncrypt next to None in one run, compared.
Behaviour only (both runs deliver every tag, the comparison line is printed): no speed is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_opcua_security_scenario_compares_signandencrypt_with_none(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [
            sys.executable, "benchmarks/run.py", "--scenario", "opcua-security", "--mode", "tag",
            "--scale", "0.005", "--interval-ms", "500", "--duration-s", "2", "--warmup-s", "0.5", "--out", str(out),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert results["opcua-20k"]["config"]["security"] == "None"
    assert results["opcua-20k-secure"]["config"]["security"] == "Aes256_Sha256_RsaPss/SignAndEncrypt"
    for result in results.values():
        assert result["delivered"]["tags_starved"] == 0, result["delivered"]
    assert "opcua-20k/tag security cost: " in completed.stdout
    assert "with SignAndEncrypt vs " in completed.stdout
