"""Run a function in a fresh subprocess and report its wall time and peak memory increase."""

from __future__ import annotations

import json
import subprocess
import sys


def measure(module: str, function: str, *args: object) -> dict:
    """Call ``module.function(*args)`` in a child process; returns seconds and peak RSS growth (MiB).

    The child records its resident set size after imports and set-up (the function returns
    a callable) and its peak RSS after running it; the difference is the work's own peak.
    """
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {repr(sys.path[0])})
import {module} as m
run = m.{function}(*{json.dumps([*args])})
def rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
base = rss_mib()
start = time.perf_counter()
extra = run()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_mib": peak - base, "extra": extra}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
