"""A niced sweep's workers yield as the sweep does, also where the kernel schedules each session as its own
group (Linux autogroups): there a worker, which runs in its own session, would otherwise take a full share."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AUTOGROUPS = Path("/proc/sys/kernel/sched_autogroup_enabled")


@pytest.mark.skipif(not AUTOGROUPS.is_file() or AUTOGROUPS.read_text().strip() != "1",
                    reason="the kernel does not group by session (no /proc autogroups)")
def test_the_workers_scheduling_group_takes_the_sweeps_niceness(tmp_path):
    sweep = textwrap.dedent("""
        import os, sys
        os.nice(7)
        from peftlab.bench.supervisor import SweepStop
        with open(sys.argv[1], "w") as log:
            worker = "import os; print(open('/proc/self/autogroup').read(), os.getsid(0))"
            status = SweepStop().run([sys.executable, "-c", worker], log, dict(os.environ), 60)
        sys.exit(status)
    """)
    log = tmp_path / "worker.log"
    subprocess.run([sys.executable, "-c", sweep, str(log)], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO / "src")}, start_new_session=True)
    group, session = log.read_text().rsplit(maxsplit=1)
    assert group.endswith("nice 7"), group  # the worker's own group, at the sweep's niceness
    assert int(session) != os.getsid(0)  # it did run in a session of its own
