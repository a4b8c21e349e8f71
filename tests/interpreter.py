"""Running a script in a fresh Python under triton's CPU interpreter (``TRITON_INTERPRET=1`` must be set
before triton is imported, hence the subprocess), with this checkout on the path."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_interpreted(script: str, timeout: int = 600) -> None:
    """Run ``script``; it must exit 0 and print ``ok``."""
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
