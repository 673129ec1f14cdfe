"""`make status`'s CPU and memory columns (ml.platform.startup.usage): a service's whole process tree is
counted, its CPU over the interval as % of one core, its resident memory summed."""

from __future__ import annotations

import subprocess
import sys

from ports import stop_group

from ml.platform.startup.usage import usage, usage_text

BUSY = (
    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'while True: pass']); import time; time.sleep(600)"
)
IDLE = "import time; time.sleep(600)"


def test_usage_counts_a_service_s_whole_tree():
    busy = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
    idle = subprocess.Popen([sys.executable, "-c", IDLE], start_new_session=True)
    try:
        used = usage({"busy": busy.pid, "idle": idle.pid, "gone": 2**22 + 7}, interval=1.5)
        # the busy loop runs in the grandchild: it counts for the service whose root started it
        assert used["busy"]["processes"] == 2 and used["idle"]["processes"] == 1
        assert used["busy"]["cpu_percent"] >= 5 > used["idle"]["cpu_percent"], used  # 2 cores shared with others
        assert used["idle"]["rss_mib"] >= 1 and used["busy"]["rss_mib"] > used["idle"]["rss_mib"]
        assert used["gone"] == {"processes": 0, "cpu_percent": 0.0, "rss_mib": 0}
        assert "CPU" in usage_text(used["busy"]) and "RSS" in usage_text(used["busy"]) and usage_text({}) == ""
    finally:
        stop_group(busy)
        stop_group(idle)
