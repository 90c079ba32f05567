"""Counter-based random draws keyed by an id: the same draw whatever else is drawn with it.

A draw is a pure function of ``(seed, stream, key, counter)``: a SplitMix64 finaliser over the
seed, a stable 64-bit hash of the key (``pandas.util.hash_array``, the same on every machine and
process) and a counter (e.g. the retry number). A charge's or customer's draw therefore does not
depend on which other ids share its batch, chunk or cluster partition, nor on their order, so a
computation split over workers draws exactly what one process draws.

Streams keep unrelated uses apart (the uniform random policy's draws, the backtest's customer
split, ...): stream 0 is the policies' stream; every other user names its own constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_COUNTER = np.uint64(0xD6E8FEB86659FD93)
_STREAM = np.uint64(0xBF58476D1CE4E5B9)
_UNIT = 1.0 / 9007199254740992.0  # 2**-53


def mix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (``uint64``, wrapping): a bijection that scrambles every bit."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(x ^ (x >> np.uint64(31)))


def key_hashes(keys: Sequence[object] | np.ndarray) -> np.ndarray:
    """Stable 64-bit hashes of ids (their text), the same in every process and on every host."""
    return np.asarray(
        pd.util.hash_array(np.asarray(keys, dtype=object).astype(str).astype(object)),
        dtype=np.uint64,
    )


def keyed_uniforms(
    seed: int,
    keys: Sequence[object] | np.ndarray,
    counter: np.ndarray | int,
    *,
    stream: int = 0,
) -> np.ndarray:
    """Uniforms in ``[0, 1)``, one per key, keyed by ``(seed, stream, key, counter)``.

    Parameters
    ----------
    seed
        The run's seed.
    keys
        Ids (charge or customer ids); equal ids with equal counters draw equal numbers.
    counter
        Per key (or one for all): which draw of that key (e.g. the retry number).
    stream
        Which use the draws serve (0: the policies' draws; see the module docstring).
    """
    ids = key_hashes(keys)
    count = np.broadcast_to(np.asarray(counter, dtype=np.int64), ids.shape).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = np.full(ids.shape, seed & MASK64, dtype=np.uint64) * _GOLDEN
        if stream:
            x = mix64(x ^ (np.uint64(stream & MASK64) * _STREAM))
        x = mix64(x ^ ids)
        x = mix64(x ^ (count * _COUNTER))
    return (x >> np.uint64(11)).astype(np.float64) * _UNIT
