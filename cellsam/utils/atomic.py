"""Writes that never leave a half-written file under its final name.

`atomic_path(final)` yields a temporary path in the same folder (same suffix, so writers
that choose a format by suffix still work); when the block ends without an error the
temporary file replaces `final` in one `os.replace`, else it is deleted and whatever was
at `final` before stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """A temporary sibling of `final` to write to; renamed to `final` on success."""
    final = Path(final)
    tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(final: str | Path, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
