"""The harness's cases as pytest items (one per case x backend), via harness.pytest_plugin.

Gated backends skip with their reason; a failing row fails its item with the verdict message.
"""

import pytest

from harness.cases import CaseContext
from harness.results import Status
from harness.runner import run_one


def test_case(moeacc_case, moeacc_backend, moeacc_device, moeacc_record, moeacc_rules):
    device, kind = moeacc_device
    row = run_one(moeacc_backend, CaseContext(moeacc_case, device), kind, rules=moeacc_rules)
    moeacc_record(row)
    if row.status is Status.SKIPPED:
        pytest.skip(row.message)
    assert row.status is Status.PASS, f"{row.status.value}: {row.message}  (repro: {row.repro})"
