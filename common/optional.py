"""Optional dependencies: a missing one is a one-line UserError naming the package and its install command."""
from __future__ import annotations

import importlib

from revnet.common.errors import UserError

DISTRIBUTION = "revnet-pipeline"


def require(module: str, extra: str, purpose: str):
    """`import module`, or a UserError saying that `purpose` needs the `extra` and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = error.name or module
        raise UserError(f"{purpose} needs the optional package {missing!r}, which is not installed; install it "
                        f"with: pip install '{DISTRIBUTION}[{extra}]'") from None


def missing_module_message(error: ImportError) -> str:
    """The one line for an ImportError that escaped to the command line (a broken or partial install)."""
    if error.name:
        return (f"the Python module {error.name!r} is not installed, but this command needs it; reinstall the "
                f"project with its requirements: pip install '{DISTRIBUTION}' (or pip install -e . in a clone)")
    return str(error).strip().splitlines()[0] if str(error).strip() else "a required Python module is missing"

