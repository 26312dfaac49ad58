"""Our code for remote Beam workers, as a wheel passed with --extra_package (Beam's standard way).

X
record code): Pillow, numpy and google-crc32c, with Beam already in the worker image. Beam installs an
extra package with its dependencies, so the wheel is a small distribution of just those packages that
declares just those requirements; the full `revnet-pipeline` would make every worker install TensorFlow.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

WORKER_DISTRIBUTION = "revnet-preprocess-worker"
WORKER_PACKAGES = ("common", "preprocess", "pipeline")
WORKER_REQUIREMENTS = ("pillow", "numpy<2.5", "google-crc32c")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("revnet-pipeline")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_worker_wheel(output_dir: str) -> str:
    """Build the worker wheel into `output_dir` from the installed `revnet` package; returns its path."""
    import revnet

    source_root = os.path.dirname(os.path.abspath(revnet.__file__))
    with tempfile.TemporaryDirectory(prefix="revnet-worker-src-") as staging:
        target = os.path.join(staging, "revnet")
        os.makedirs(target)
        shutil.copy(os.path.join(source_root, "__init__.py"), target)
        packages = []
        for package in WORKER_PACKAGES:
            for folder, _, names in os.walk(os.path.join(source_root, package)):
                if "__init__.py" not in names:
                    continue  # e.g. __pycache__
                relative = os.path.relpath(folder, source_root)
                os.makedirs(os.path.join(target, relative))
                for name in names:
                    if name.endswith(".py"):
                        shutil.copy(os.path.join(folder, name), os.path.join(target, relative))
                packages.append("revnet." + relative.replace(os.sep, "."))
        requirements = "".join(f"\n    {requirement}" for requirement in WORKER_REQUIREMENTS)
        packages = "".join(f"\n    {package}" for package in sorted(packages))
        with open(os.path.join(staging, "setup.cfg"), "w", encoding="utf-8") as handle:
            handle.write(f"[metadata]\nname = {WORKER_DISTRIBUTION}\nversion = {_version()}\n"
                         f"description = revnet preprocessing code for Beam workers\n\n"
                         f"[options]\npackages =\n    revnet{packages}\ninstall_requires ={requirements}\n")
        with open(os.path.join(staging, "setup.py"), "w", encoding="utf-8") as handle:
            handle.write("import setuptools\nsetuptools.setup()\n")
        os.makedirs(output_dir, exist_ok=True)
        process = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                  "--quiet", "--wheel-dir", output_dir, staging], capture_output=True, text=True)
    if process.returncode != 0:
        tail = (process.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"building the worker package for remote Beam workers failed: {tail}")
    wheels = glob.glob(os.path.join(output_dir, "revnet_preprocess_worker-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one worker wheel in {output_dir}, found {wheels}")
    return wheels[0]
