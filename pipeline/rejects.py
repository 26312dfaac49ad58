"""The reject limit of a run, and the list of rejects kept for the user when a run fails on it.

A split may reject up to max(--max-rejects, floor(--max-reject-fraction * inputs read)) inputs (3 and
1% by default: a few broken files in a small folder pass, a systematic failure does not). A run over
the limit publishes nothing, so the list the user needs to fix the files cannot be in the dataset: it
is kept beside it as OUTPUT.rejects.jsonl, named in the error, and removed by the next run into that
OUTPUT that succeeds. A file of that name that preprocess did not write is never touched.
"""
from __future__ import annotations

import collections
import json
from typing import Dict, List

from revnet.common import storage
from revnet.common.errors import UserError
from revnet.pipeline.preprocess_config import PreprocessConfig

REJECT_KEYS = ("path", "reason", "split")


def reject_limit(read: int, config: PreprocessConfig) -> int:
    """How many of a split's `read` inputs may be rejected before the run fails."""
    return max(config.max_rejects, int(config.max_reject_fraction * read))


def rejects_jsonl(rejects: List[Dict]) -> bytes:
    """rejects.jsonl: one sorted JSON object per line, so re-runs give the same bytes."""
    return "".join(line + "\n" for line in sorted(json.dumps(r, sort_keys=True) for r in rejects)).encode("utf-8")


def kept_path(output_dir: str) -> str:
    return output_dir.rstrip("/") + ".rejects.jsonl"


def _written_by_us(path: str) -> bool:
    """True if `path` is absent, empty or a rejects list as written here (so it may be replaced or removed)."""
    if not storage.exists(path):
        return True
    try:
        text = storage.read_text(path)
    except (OSError, UnicodeDecodeError):
        return False
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return False
    return all(isinstance(row, dict) and set(REJECT_KEYS) <= set(row) for row in rows)


def _most_common(rejects: List[Dict], split: str) -> str:
    mine = [r for r in rejects if r["split"] == split]
    reason, count = collections.Counter(r["reason"] for r in mine).most_common(1)[0]
    example = next(r["path"] for r in mine if r["reason"] == reason)
    return f"most often ({count}x) {reason!r}, e.g. {example}"


def check_limits(read: Dict[str, int], rejected: Dict[str, int], rejects: List[Dict], config: PreprocessConfig,
                 output_dir: str) -> None:
    """A UserError naming the first split over its limit, with the full list kept beside `output_dir`."""
    over = [split for split in read if rejected[split] > reject_limit(read[split], config)]
    if not over:
        return
    split = over[0]
    kept = kept_path(output_dir)
    if _written_by_us(kept):
        storage.write_bytes(kept, rejects_jsonl(rejects))
        where = f"all {len(rejects)} are listed in {kept}"
    else:
        where = f"{kept} exists and was not written by preprocess, so the list was not saved"
    raise UserError(f"{split}: {rejected[split]} of {read[split]} inputs rejected, more than the "
                    f"{reject_limit(read[split], config)} allowed (the larger of --max-rejects {config.max_rejects} "
                    f"and --max-reject-fraction {config.max_reject_fraction} of {read[split]}); "
                    f"{_most_common(rejects, split)}; "
                    f"{where}; fix or remove those files, or raise --max-rejects or --max-reject-fraction to accept "
                    f"them")


def remove_kept_list(output_dir: str) -> None:
    """After a run into `output_dir` succeeded: the list an earlier failed run kept beside it is stale."""
    kept = kept_path(output_dir)
    if storage.exists(kept) and _written_by_us(kept):
        storage.remove(kept)
