"""Running `python cli.py ...` from the tests, as a user does: a fresh process in the repository root."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, timeout: float = 600, check: bool = False, quiet_tf: bool = False):
    """The finished process (text output). `check`: assert it exited 0, showing its stderr otherwise.
    `quiet_tf`: TF_CPP_MIN_LOG_LEVEL=3 and no TF_CONFIG inherited from the test process."""
    env = None
    if quiet_tf:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result
