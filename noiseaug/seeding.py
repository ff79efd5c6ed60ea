"""Per-file random generators, independent of scheduling and listing order.

Each (input, copy) gets its own stream, following numpy's advice for parallel
work (``random/parallel.rst``): one ``SeedSequence`` built from the root seed
and a stable work key, never ``seed + index``. The work key is the SHA-256 of
the input's relative POSIX path (as bytes, so any file name works) and the
copy index. The 128-bit per-file seed that results is recorded in the manifest
and is enough on its own to rebuild the file's generator (``generator``).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from numpy.random.bit_generator import ISpawnableSeedSequence

from . import records
from .noise import _kernel

SCHEME = records.SCHEME  # the manifest's run record names it; defined where records are, without numpy


def _words(digest: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, len(digest), 4))


def file_seed(master_seed: int, relpath: bytes, copy: int) -> int:
    """The 128-bit seed of one output, from the master seed and its work key."""
    digest = hashlib.sha256(relpath).digest()
    if _compiled_seeds() and 0 <= copy < 1 << 32:  # the key's words, as SeedSequence assembles them
        entropy = _padded_words(master_seed) + digest + copy.to_bytes(4, "little")
        return int.from_bytes(_kernel.seed_state(entropy, 4), "little")
    key = _words(digest) + (copy,)
    state = np.random.SeedSequence(master_seed, spawn_key=key).generate_state(4, np.uint32)
    return sum(int(word) << (32 * i) for i, word in enumerate(state))


def generator(seed: int) -> np.random.Generator:
    """The generator for a per-file seed (as recorded in the manifest).

    SFC64: the fastest of numpy's bit generators, statistically sound for
    this use; the noise kernels spend a large share of their time drawing bits.
    """
    return np.random.Generator(np.random.SFC64(seed_sequence(seed)))


def page_generator(seed: int, page: int) -> np.random.Generator:
    """The generator of one page of a multi-page image: page 0 uses the file's own stream.

    Other pages spawn from the file's seed with the page index as work key,
    so each page's noise is independent of the others' sizes.
    """
    if page == 0:
        return generator(seed)
    return np.random.Generator(np.random.SFC64(seed_sequence(seed, (page,))))


def seed_sequence(entropy: int, spawn_key: tuple[int, ...] = ()) -> ISpawnableSeedSequence:
    """``np.random.SeedSequence(entropy, spawn_key=spawn_key)``, or its compiled twin (same words, same children)."""
    if _compiled_seeds():
        return CompiledSeedSequence(entropy, spawn_key)
    return np.random.SeedSequence(entropy, spawn_key=spawn_key)


class CompiledSeedSequence(ISpawnableSeedSequence):
    """numpy's ``SeedSequence`` for integer entropy and spawn keys, mixed by the compiled kernel.

    Building numpy's own takes about 30 µs, several times per file: a
    noticeable share of a small image's whole cost. This one gives the same
    words and spawns the same children (checked against numpy's once per
    process, see :func:`_compiled_seeds`).
    """

    pool_size = 4

    def __init__(self, entropy: int, spawn_key: tuple[int, ...] = ()) -> None:
        self.entropy, self.spawn_key = entropy, tuple(spawn_key)
        self.n_children_spawned = 0
        self._assembled = _assembled(entropy, self.spawn_key)

    def generate_state(self, n_words: int, dtype: type = np.uint32) -> np.ndarray:
        wide = np.dtype(dtype) == np.uint64
        if not wide and np.dtype(dtype) != np.uint32:
            raise ValueError("only support uint32 or uint64")
        raw = _kernel.seed_state(self._assembled, 2 * n_words if wide else n_words)
        return np.frombuffer(raw, "<u8" if wide else "<u4").astype(np.uint64 if wide else np.uint32)

    def spawn(self, n_children: int) -> list[CompiledSeedSequence]:
        first = self.n_children_spawned
        self.n_children_spawned += n_children
        return [CompiledSeedSequence(self.entropy, self.spawn_key + (i,)) for i in range(first, first + n_children)]

    def spawn_states(self, n_children: int) -> list[bytearray]:
        """The SFC64 states (4 uint64 words each) of the generators that ``spawn(n_children)`` would seed,
        counted as spawned the same way: for streams used once, without building their generators."""
        first = self.n_children_spawned
        self.n_children_spawned += n_children
        return [_kernel.sfc64_state(_assembled(self.entropy, self.spawn_key + (i,)))
                for i in range(first, first + n_children)]


def _assembled(entropy: int, spawn_key: tuple[int, ...]) -> bytes:
    """The words SeedSequence mixes: the entropy (padded to the pool's size beside a spawn key), then the key."""
    run = _padded_words(entropy) if spawn_key else _uint32_bytes(entropy)
    return run + b"".join(_uint32_bytes(k) for k in spawn_key)


def fresh_states(rng: np.random.Generator, n: int) -> list[bytearray] | None:
    """The states of ``rng.spawn(n)``'s generators, spawned from ``rng``'s seed sequence, when it is the
    compiled one (else None: spawn generators the usual way)."""
    seq = getattr(rng.bit_generator, "seed_seq", None)
    return seq.spawn_states(n) if isinstance(seq, CompiledSeedSequence) and _compiled_seeds() else None


def _uint32_bytes(value: int) -> bytes:
    """An integer as numpy's SeedSequence takes it: little-endian 32-bit words, at least one."""
    if value < 0:
        raise ValueError("expected non-negative integer")
    return value.to_bytes(max(4, -(-value.bit_length() // 32) * 4), "little")


@functools.lru_cache(maxsize=16)
def _padded_words(value: int) -> bytes:
    """The run entropy beside a spawn key: padded with zero words to the pool's four."""
    return _uint32_bytes(value).ljust(4 * CompiledSeedSequence.pool_size, b"\0")


_seed_check: list[bool] = []  # once per process: [] unchecked, [True] the compiled mixing agrees with numpy's


def _sfc64_words(seq: np.random.SeedSequence) -> bytes:
    """numpy's own SFC64 state seeded from ``seq``, as the 32 bytes the compiled loops step."""
    return np.asarray(np.random.SFC64(seq).state["state"]["state"], dtype="<u8").tobytes()


def _compiled_seeds() -> bool:
    """Whether the compiled SeedSequence is there and gives numpy's words, children included."""
    if not _seed_check:
        _seed_check.append(False)
        if _kernel is not None and hasattr(_kernel, "seed_state"):
            cases = ((0, ()), (2024, ()), (1 << 127 | 12345, (7, 0, 1 << 40)), (3, tuple(range(11))))
            _seed_check[0] = all(
                np.array_equal(CompiledSeedSequence(e, k).generate_state(5, np.uint64),
                               np.random.SeedSequence(e, spawn_key=k).generate_state(5, np.uint64))
                and np.array_equal(CompiledSeedSequence(e, k).spawn(2)[1].generate_state(3),
                                   np.random.SeedSequence(e, spawn_key=k).spawn(2)[1].generate_state(3))
                and bytes(CompiledSeedSequence(e, k).spawn_states(2)[1]) == _sfc64_words(
                    np.random.SeedSequence(e, spawn_key=k).spawn(2)[1])
                for e, k in cases)
    return _seed_check[0]

