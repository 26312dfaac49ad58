"""The one exception type that means "the user gave bad input", and the readable line of a TensorFlow error."""
import re


class UserError(Exception):
    """Bad input: the message says what was wrong and what is expected.

    `cli.py` turns it into a one-line message and exit code 2; the server turns it
    into gRPC INVALID_ARGUMENT (or NOT_FOUND when `not_found` is set).
    """

    def __init__(self, message: str, *, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def choose(kind: str, value, choices):
    """Return `value` if it is one of `choices`, else raise a UserError listing them."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}; expected one of: {', '.join(map(str, choices))}")
    return value


def error_reason(error: BaseException) -> str:
    """The informative line of a TensorFlow error: without its `{{function_node ...}}`/`[Op:...]` wrapping
    and, for errors raised inside a tf.function, without the "Graph execution error" preamble."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]|\s*\[\[\{\{node [^\]]*\]\]", "", text)
    preamble = ("Graph execution error", "Detected at node", "File ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(preamble)]
    return lines[0] if lines else type(error).__name__
