"""Synthetic data with a known answer: token streams from a fixed random Markov chain.

Real text cannot tell you how good a loss is. A Markov chain's entropy rate is the best loss
any model can reach, so a run on it shows at a glance whether training works (val loss heads
for `entropy_rate()`) - in about a minute on a CPU, with no download.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

from .errors import DataError

# Tokens per chunk of a sample: a few MB of Python lists, whatever the stream's length.
SAMPLE_CHUNK = 1 << 16
# Contexts are vocab_size**order; beyond this the tables and the stationary solve get slow and
# memory hungry (order 2 with vocab 64 is 4,096 contexts; order 3 fits only for vocab <= 101).
MAX_CONTEXTS = 2**20


def _distinct_tokens(rng: np.random.Generator, rows: int, k: int, vocab: int) -> np.ndarray:
    """k distinct random tokens per row, without ever holding rows * vocab numbers at once."""
    if vocab <= 256:
        # Small alphabets: the first k of a random permutation, in chunks of <= 4M floats.
        out = np.empty((rows, k), dtype=np.int64)
        step = max(1, (1 << 22) // vocab)
        for lo in range(0, rows, step):
            hi = min(lo + step, rows)
            out[lo:hi] = rng.random((hi - lo, vocab)).argsort(axis=1)[:, :k]
        return out
    # Large alphabets (e.g. 8,192): draw k with replacement and redraw rows that repeat a token;
    # with k << vocab almost no row needs a second try.
    out = rng.integers(0, vocab, size=(rows, k))
    while True:
        srt = np.sort(out, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        if not dup.any():
            return out
        out[dup] = rng.integers(0, vocab, size=(int(dup.sum()), k))


def _copy_generator(rng: np.random.Generator) -> np.random.Generator:
    copy = np.random.Generator(type(rng.bit_generator)())
    copy.bit_generator.state = rng.bit_generator.state
    return copy


class MarkovChain:
    """A random order-k Markov chain over `vocab_size` tokens.

    Each context (the last `order` tokens) gets `support` (at most 8) random successor tokens
    with probabilities from a Dirichlet(0.3): few likely successors make it learnable and an
    entropy rate of about 1.2-1.5 nats for vocab 32-64. `smoothing` mixes in 1% of the uniform
    distribution so the chain is irreducible and aperiodic: the stationary distribution is
    unique and one long sample shows the entropy rate (a purely sparse chain can split into
    closed pieces and a sample would get stuck in one of them).
    """

    def __init__(self, vocab_size: int, order: int = 1, seed: int = 0) -> None:
        if vocab_size < 2 or order < 1:
            raise DataError(
                f"MarkovChain needs vocab_size >= 2 and order >= 1, got "
                f"vocab_size={vocab_size}, order={order}."
            )
        n_ctx = vocab_size**order
        if n_ctx > MAX_CONTEXTS:
            raise DataError(
                f"A Markov chain of order {order} over {vocab_size} tokens has {n_ctx:,} contexts, "
                f"more than the {MAX_CONTEXTS:,} supported; lower synthetic_order or vocab_size."
            )
        self.vocab_size, self.order, self.seed = vocab_size, order, seed
        self.smoothing = 0.01
        self.n_contexts = n_ctx
        s = self.support = min(vocab_size, 8)

        rng = np.random.default_rng(seed)
        tokens = _distinct_tokens(rng, n_ctx, s, vocab_size)
        probs = rng.dirichlet(np.full(s, 0.3), size=n_ctx)
        probs = np.nan_to_num(probs)  # tiny concentrations can underflow a whole row to 0/0
        dead = probs.sum(axis=1) <= 0
        probs[dead, 0] = 1.0
        probs /= probs.sum(axis=1, keepdims=True)
        self.next_tokens = tokens  # [n_ctx, s] successor ids
        self.next_probs = probs  # [n_ctx, s] their probabilities before smoothing
        # Context index = t_1 * V**(k-1) + ... + t_k (t_k most recent); appending token t moves
        # to (ctx % V**(k-1)) * V + t.
        suffix = np.arange(n_ctx, dtype=np.int64) % (vocab_size ** (order - 1))
        self._next_ctx = suffix[:, None] * vocab_size + tokens
        self._stationary: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"MarkovChain(vocab_size={self.vocab_size}, order={self.order}, "
            f"seed={self.seed}, support={self.support}, smoothing={self.smoothing})"
        )

    def _push(self, pi: np.ndarray) -> np.ndarray:
        """One step of the chain applied to a distribution over contexts."""
        V, eps = self.vocab_size, self.smoothing
        mass = (1.0 - eps) * pi[:, None] * self.next_probs
        out = np.bincount(self._next_ctx.ravel(), weights=mass.ravel(), minlength=self.n_contexts)
        if eps > 0:
            # Uniform part: mass of all contexts sharing a suffix spreads evenly over its V
            # successors. Rows of the reshape are indexed by the oldest token.
            by_suffix = pi.reshape(V, -1).sum(axis=0)
            out += np.repeat(by_suffix * (eps / V), V)
        return out

    def stationary_distribution(self) -> np.ndarray:
        """Stationary distribution over contexts, by power iteration (cached).

        The lazy chain (pi + P pi) / 2 has the same fixed point and cannot oscillate, so this
        converges for any chain with a single closed class. Cost per step is O(n_contexts *
        support); a few hundred steps suffice for the default chains.
        """
        if self._stationary is None:
            pi = np.full(self.n_contexts, 1.0 / self.n_contexts)
            for _ in range(200_000):
                new = 0.5 * (pi + self._push(pi))
                new /= new.sum()
                done = np.abs(new - pi).sum() < 1e-13
                pi = new
                if done:
                    break
            self._stationary = pi
        return self._stationary

    def _row_entropy(self) -> np.ndarray:
        """Entropy (nats) of each context's full next-token distribution, smoothing included."""
        V, eps = self.vocab_size, self.smoothing
        p = (1.0 - eps) * self.next_probs + eps / V
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        if eps > 0:
            h += (V - self.support) * (-(eps / V) * np.log(eps / V))
        return h

    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token: sum_ctx pi(ctx) * H(next | ctx).

        This is the lowest cross-entropy any model can reach (given at least `order` tokens of
        context), so it is the target line for the val loss.
        """
        return float(self.stationary_distribution() @ self._row_entropy())

    def sample(self, n_tokens: int, seed: int) -> np.ndarray:
        """n_tokens ids (int64) from the chain, started in its stationary distribution.

        All of `sample_chunks` at once: for tests and previews, not for big streams.
        """
        chunks = list(self.sample_chunks(n_tokens, seed))
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    def sample_chunks(
        self, n_tokens: int, seed: int, chunk_tokens: int = SAMPLE_CHUNK
    ) -> Iterator[np.ndarray]:
        """The ids of `sample(n_tokens, seed)`, as int64 chunks of at most `chunk_tokens`.

        Memory is one chunk, whatever n_tokens is. The chain is sequential, so each chunk is a
        tight Python loop over compact arrays (~1 us per token). All randomness comes from
        `seed` (independent of the seed that built the chain) in three draws of n - order
        numbers each, one after the other on one generator: uniform-step coins, uniform
        tokens, then the uniforms that pick successors. Each draw gets its own copy of the
        generator, set where that draw starts, so the chunks hold exactly the numbers of one
        big draw (and the ids of earlier versions, which made the three draws whole).
        """
        V, k, s = self.vocab_size, self.order, self.support
        n = int(n_tokens)
        if n <= 0:
            return
        rng = np.random.default_rng(seed)
        ctx = int(rng.choice(self.n_contexts, p=self.stationary_distribution()))
        # The first `order` tokens are the starting context's digits, oldest first.
        first = [(ctx // V ** (k - 1 - j)) % V for j in range(k)]
        yield np.asarray(first[:n], dtype=np.int64)
        n_loop = max(0, n - k)
        if n_loop == 0:
            return
        coins = rng
        # random() takes one 64-bit draw per number, so the token draw starts n_loop later.
        tokens = _copy_generator(rng)
        tokens.bit_generator.advance(n_loop)
        # integers() may reject and redraw, so where the last draw starts is found by drawing
        # (and dropping) the tokens once; chunked integers() calls draw the same numbers as one.
        picks = _copy_generator(tokens)
        for lo in range(0, n_loop, chunk_tokens):
            picks.integers(0, V, size=min(chunk_tokens, n_loop - lo))
        # Flat C arrays: as fast to index as lists, and 8 bytes per entry instead of ~32.
        cum, succ = array("d"), array("q")
        cum.frombytes(np.cumsum(self.next_probs, axis=1).astype(np.float64).tobytes())
        succ.frombytes(self.next_tokens.astype(np.int64).tobytes())
        n_ctx, eps = self.n_contexts, self.smoothing
        for lo in range(0, n_loop, chunk_tokens):
            m = min(chunk_tokens, n_loop - lo)
            uniform_step = (coins.random(m) < eps).tolist()
            uniform_tok = tokens.integers(0, V, size=m).tolist()
            u = picks.random(m).tolist()
            out = [0] * m
            for i in range(m):
                if uniform_step[i]:
                    t = uniform_tok[i]
                else:
                    base = ctx * s
                    # hi = last slot: rounding can leave cum[-1] a hair under 1.0.
                    t = succ[bisect_right(cum, u[i], base, base + s - 1)]
                out[i] = t
                ctx = (ctx * V + t) % n_ctx
            yield np.asarray(out, dtype=np.int64)

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """log p(token_t | previous `order` tokens) for t >= order: for checking and tests."""
        V, k = self.vocab_size, self.order
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens) - k
        if n <= 0:
            return np.empty(0)
        ctx = np.zeros(n, dtype=np.int64)
        for j in range(k):
            ctx = ctx * V + tokens[j : j + n]
        nxt = tokens[k:]
        p = np.full(n, self.smoothing / V)
        match = self.next_tokens[ctx] == nxt[:, None]  # [n, s]; at most one True per row
        p += (1.0 - self.smoothing) * (self.next_probs[ctx] * match).sum(axis=1)
        return np.log(p)


# The streams are offered as text rows of this many space-separated ids, so synthetic data has
# the same DatasetDict shape as every other source (and max_samples counts these rows).
ROW_TOKENS = 1024


@lru_cache(maxsize=4)
def _chain(vocab_size: int, order: int, seed: int) -> MarkovChain:
    # Cached: the text source and the known-entropy lookup both need the same chain, and its
    # stationary distribution is the one slow part.
    return MarkovChain(vocab_size, order=order, seed=seed)


def synthetic_chain(config: Any) -> MarkovChain:
    """The chain config describes; it comes from config.seed, so a new seed is a new task."""
    return _chain(int(config.vocab_size), int(config.synthetic_order), int(config.seed))


def _splits(config: Any) -> tuple[MarkovChain, tuple[int, int], tuple[int, int]]:
    """The chain, (train, validation) sizes and (train, validation) seeds: one plan shared by the
    text rows and the ids, so both give the same tokens."""
    chain = synthetic_chain(config)
    total = int(config.synthetic_tokens)
    n_val = int(round(total * float(config.val_fraction)))
    seeds = np.random.SeedSequence(int(config.seed)).generate_state(2).tolist()
    return chain, (total - n_val, n_val), (seeds[0], seeds[1])


def synthetic_text_data(config: Any) -> DatasetDict:
    """Train/validation token streams from one chain, as rows of space-separated ids.

    Train and val are independent samples of the same chain, not two halves of one stream, so
    they share no tokens. IdentityTokenizer turns the rows back into the same ids, and since it
    has no EOS the concatenated rows are exactly the sampled streams.
    """
    chain, (n_train, n_val), (train_seed, val_seed) = _splits(config)

    def rows(ids: np.ndarray) -> Dataset:
        text = [" ".join(map(str, ids[i : i + ROW_TOKENS].tolist()))
                for i in range(0, len(ids), ROW_TOKENS)]
        return Dataset.from_dict({"text": text})

    return DatasetDict(
        train=rows(chain.sample(n_train, seed=train_seed)),
        validation=rows(chain.sample(n_val, seed=val_seed)),
    )


def synthetic_id_chunks(config: Any) -> dict[str, tuple[int, Iterator[np.ndarray]]]:
    """The ids of `synthetic_text_data(config)` (max_samples applied) per split: how many, and
    the ids as int64 chunks.

    What load_token_data writes to the token file: the same ids as tokenizing the text rows,
    without ever holding a whole stream (or its text) in memory.
    """
    chain, (n_train, n_val), (train_seed, val_seed) = _splits(config)
    # max_samples keeps the first rows of each split, and a row is ROW_TOKENS ids.
    rows = int(config.max_samples or 0)

    def kept(n: int) -> int:
        return n if rows <= 0 else min(n, rows * ROW_TOKENS)

    def stream(n: int, seed: int) -> Iterator[np.ndarray]:
        left = kept(n)
        # The sample is drawn for all n tokens and cut, as selecting rows of it does: a
        # shorter sample is not a prefix of a longer one.
        for chunk in chain.sample_chunks(n, seed):
            if left <= 0:
                return
            yield chunk[:left]
            left -= min(left, len(chunk))

    return {"train": (kept(n_train), stream(n_train, train_seed)),
            "validation": (kept(n_val), stream(n_val, val_seed))}
