"""JSON request bodies with their nesting bounded before the parser runs (REST of both protocols)."""
from __future__ import annotations

import json

import numpy as np

from revnet.common.errors import UserError
from revnet.serving.outcomes import one_line

MAX_JSON_DEPTH = 64  # a TF Serving predict body needs 6 levels
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def json_depth_within(data: bytes, limit: int = MAX_JSON_DEPTH, chunk_bytes: int = 1 << 20) -> bool:
    """False when brackets nest deeper than `limit`. Brackets inside strings count too, which can only
    overestimate; the C JSON parser recurses per level, so the depth is bounded before it runs."""
    depth = 0
    for start in range(0, len(data), chunk_bytes):
        steps = _DEPTH_STEP[np.frombuffer(data, np.uint8, count=min(chunk_bytes, len(data) - start), offset=start)]
        running = np.cumsum(steps, dtype=np.int32) + depth
        if int(running.max()) > limit:
            return False
        depth = int(running[-1])
    return True


def parse_json_bytes(data: bytes) -> object:
    """JSON with its nesting bounded before the parser recurses; UserError when it is malformed or too deep."""
    if not json_depth_within(data):
        raise UserError(f"the JSON body is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(data or b"null")
    except RecursionError:
        raise UserError("the JSON body is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"the body is not valid JSON ({one_line(error, 200)})") from None
