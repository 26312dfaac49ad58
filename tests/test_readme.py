"""The README's shell blocks marked `<!-- runnable -->` must work exactly as shown."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"<!-- runnable -->\s*\n```bash\n(.*?)```", re.S)


def runnable_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return BLOCK.findall(handle.read())


def test_readme_marks_some_blocks_runnable():
    assert len(runnable_blocks()) >= 1


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.strip().splitlines()[0][:60])
def test_runnable_readme_block_succeeds(block, tmp_path):
    env = dict(os.environ, README_TMP=str(tmp_path))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, f"{block}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
