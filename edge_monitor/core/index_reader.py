"""Read the vectors of a bank's usearch index in a child process.

usearch's loader trusts the file: an `index.usearch` whose bytes were changed and whose
checksums were recomputed to match (an edited, unsigned bundle) can make `Index.restore` or a
later search crash the whole process (SIGSEGV). So the daemon never parses those bytes
itself: a short-lived child restores the index and writes its vectors to stdout as `.npy`;
a crash there is one clear error, and the parent builds its own search graph from the
vectors when it needs one.

    python -m edge_monitor.core.index_reader PATH   (what `read_index_vectors` runs)
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import BankError, one_line

READ_TIMEOUT_S = 120.0


def read_index_vectors(path: Path) -> np.ndarray:
    """(count, dim) float32 vectors of the index at `path`, key i = row i, read by a child."""
    try:
        done = subprocess.run([sys.executable, "-m", __name__, str(path)], capture_output=True,
                              timeout=READ_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BankError(f"{path}: reading the usearch index took over {READ_TIMEOUT_S:.0f} s; "
                        "copy the bank again") from None
    if done.returncode < 0:
        raise BankError(f"{path}: the index library crashed reading this usearch index (signal "
                        f"{-done.returncode}): the file is damaged or was edited; copy the bank "
                        "again, and sign bundles (model.require_signature) against edits")
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        detail = one_line(RuntimeError(lines[-1]))
        raise BankError(f"{path}: cannot open usearch index ({detail}); copy the bank again")
    try:
        vectors = np.load(io.BytesIO(done.stdout), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BankError(f"{path}: unreadable vectors from the index reader ({one_line(exc)})"
                        ) from exc
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _main(path: str) -> int:
    from usearch.index import Index

    index = Index.restore(path)
    if index is None:
        print("not a usearch index", file=sys.stderr)
        return 2
    count = len(index)
    vectors = (np.vstack(index.get(np.arange(count, dtype=np.int64))) if count
               else np.zeros((0, index.ndim), np.float32))
    np.save(sys.stdout.buffer, np.asarray(vectors, np.float32).reshape(count, index.ndim))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1]))
    except (ValueError, RuntimeError, OSError) as exc:
        print(one_line(exc), file=sys.stderr)
        sys.exit(2)
