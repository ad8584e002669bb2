"""What the data benchmarks share: where results go and what machine and versions made them."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    """Date, command, commit, versions and the machine (with its load: a shared CPU's wall
    times depend on who else runs)."""
    import numpy
    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("torch", "tokenizers", "pyarrow"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE).stdout.strip()
        commit += "-dirty" if dirty else ""
    except OSError:
        commit = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "git_commit": commit,
            "versions": versions, "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                              "load_avg": [round(x, 2) for x in os.getloadavg()]}}


def write_result(path: str, result: dict) -> None:
    """The benchmark's JSON at `path` (its folder made if missing), and say where."""
    import json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
