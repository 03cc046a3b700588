"""Must hold 5: pgbench's TPC-B-like load in every query mode, with no failed
transactions and the books balanced afterwards.

BOREALIS_PGBENCH_DURATION_S sets each run's length (default 10 s, as in the issue).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psycopg
import pytest

from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint

DURATION_S = int(os.environ.get("BOREALIS_PGBENCH_DURATION_S", "10"))
CLIENTS = 4
INIT_TIMEOUT_S = 300.0
# A run may overshoot -T while the last transactions and the disconnects finish.
RUN_GRACE_S = 120.0
# Read by the deadline_guard fixture: init, the run and its grace, and the checks.
TEST_DEADLINE_S = INIT_TIMEOUT_S + DURATION_S + RUN_GRACE_S + 60.0


def pgbench(endpoint: PgEndpoint, *arguments: str, timeout_s: float) -> str:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    result = subprocess.run(
        [binary, *arguments],
        env=endpoint.libpq_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"pgbench {' '.join(arguments)} failed:\n{output}"
    return output


def summary_number(output: str, label: str) -> int:
    """The integer after `label:` in pgbench's summary (e.g. 'number of failed transactions')."""
    found = re.search(rf"^{re.escape(label)}:\s*(\d+)", output, re.M)
    assert found is not None, f"no {label!r} line in pgbench output:\n{output}"
    return int(found.group(1))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_mode_keeps_books_balanced(pg_endpoint: PgEndpoint, mode: str) -> None:
    pgbench(pg_endpoint, "-i", "-s", "1", "-q", timeout_s=INIT_TIMEOUT_S)
    # -n: no VACUUM/TRUNCATE before the run, so history keeps every delta since -i.
    output = pgbench(
        pg_endpoint,
        "-n",
        "-T",
        str(DURATION_S),
        "-c",
        str(CLIENTS),
        "-j",
        "2",
        "-M",
        mode,
        timeout_s=DURATION_S + RUN_GRACE_S,
    )
    assert f"query mode: {mode}" in output
    assert summary_number(output, "number of failed transactions") == 0
    processed = summary_number(output, "number of transactions actually processed")
    assert processed > 0

    with psycopg.connect(**pg_endpoint.connect_kwargs(), autocommit=True) as conn:
        balances = conn.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
            "(SELECT sum(tbalance) FROM pgbench_tellers), "
            "(SELECT sum(bbalance) FROM pgbench_branches), "
            "(SELECT sum(delta) FROM pgbench_history), "
            "(SELECT count(*) FROM pgbench_history), "
            "(SELECT count(*) FROM pgbench_accounts)"
        ).fetchone()
    assert balances is not None
    accounts, tellers, branches, history, history_rows, account_rows = balances
    assert account_rows == 100_000
    assert history_rows == processed
    assert accounts == history == tellers == branches
