"""Per-file random generators, independent of scheduling and listing order.

Each (input, copy) gets its own stream, following numpy's advice for parallel
work (``random/parallel.rst``): one ``SeedSequence`` built from the root seed
and a stable work key, never ``seed + index``. The work key is the SHA-256 of
the input's relative POSIX path (as bytes, so any file name works) and the
copy index. The 128-bit per-file seed that results is recorded in the manifest
and is enough on its own to rebuild the file's generator (``generator``).
"""

from __future__ import annotations

import hashlib

import numpy as np

SCHEME = ("seedsequence(master, sha256(relpath), copy) -> sfc64; 8-bit images and PCM_16: round(sigma*Z) by "
          "16-bit table + exact escapes (spawned stream); others: float normal; "
          "page p > 0 of a multi-page image: seedsequence(file seed, p); v2")


def _words(digest: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, len(digest), 4))


def file_seed(master_seed: int, relpath: bytes, copy: int) -> int:
    """The 128-bit seed of one output, from the master seed and its work key."""
    key = _words(hashlib.sha256(relpath).digest()) + (copy,)
    state = np.random.SeedSequence(master_seed, spawn_key=key).generate_state(4, np.uint32)
    return sum(int(word) << (32 * i) for i, word in enumerate(state))


def generator(seed: int) -> np.random.Generator:
    """The generator for a per-file seed (as recorded in the manifest).

    SFC64: the fastest of numpy's bit generators, statistically sound for
    this use; the noise kernels spend a large share of their time drawing bits.
    """
    return np.random.Generator(np.random.SFC64(seed))


def page_generator(seed: int, page: int) -> np.random.Generator:
    """The generator of one page of a multi-page image: page 0 uses the file's own stream.

    Other pages spawn from the file's seed with the page index as work key,
    so each page's noise is independent of the others' sizes.
    """
    if page == 0:
        return generator(seed)
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(page,))))


def shard_of(relpath: bytes, count: int) -> int:
    """Which of ``count`` shards a relative path belongs to; stable everywhere."""
    digest = hashlib.sha256(b"noiseaug-shard\0" + relpath).digest()
    return int.from_bytes(digest[:8], "little") % count
