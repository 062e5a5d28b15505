"""The marketplace's own search engine: BM25 over titles, in numpy, with an inverted index.

It is what decides which items a simulated shopper sees, so its blind spots shape the logs the
way a production lexical engine shapes real ones: a title that omits the color never matches the
color word, and a title that says 'gown' never matches a query that says 'sundress'.

Scoring a query touches only the postings of its tokens (no pass over the whole catalog), so
it stays cheap for millions of items.
"""

import array
from collections.abc import Sequence

import numpy as np

from mmret.data.synthshop import vocab


class LexicalIndex:
  """Okapi BM25 over titles.

  index = LexicalIndex(titles)                     # N titles
  items, scores = index.score('white dress')       # every item matching >= 1 query token
  top = index.search('white dress', k=20, allowed=mask, prior=log_quality)
  """

  def __init__(self, titles: Sequence[str], k1: float = 1.2, b: float = 0.75):
    self.num_docs = n = len(titles)
    self.token_ids: dict[str, int] = {}
    # Typed arrays, not lists: 4-8 bytes per token instead of a Python int object each.
    docs, terms = array.array('q'), array.array('q')
    lengths = np.zeros(n, np.float32)
    for i, title in enumerate(titles):
      tokens = vocab.tokenize(title)
      lengths[i] = len(tokens)
      terms.extend(self.token_ids.setdefault(t, len(self.token_ids)) for t in tokens)
      docs.extend([i] * len(tokens))
    docs_a = np.frombuffer(docs, np.int64)
    terms_a = np.frombuffer(terms, np.int64)
    # Unique (term, doc) pairs with their term frequency, grouped by term: the postings lists.
    key = terms_a * n + docs_a
    key, tf = np.unique(key, return_counts=True)
    post_term, self.post_doc = key // n, key % n
    num_terms = len(self.token_ids)
    df = np.bincount(post_term, minlength=num_terms)
    self.post_ptr = np.concatenate([[0], np.cumsum(df)])
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    avg = max(float(lengths.mean()), 1e-6) if n else 1.0
    norm = k1 * (1 - b + b * lengths[self.post_doc] / avg)
    self.post_weight = (idf[post_term] * tf * (k1 + 1) / (tf + norm)).astype(np.float32)
    self._scratch = np.zeros(n, np.float32)   # per-query score accumulator, kept all-zero
    self._slot = np.full(n, -1, np.int64)       # per-query dedupe table, kept all -1

  def postings(self, token: str) -> np.ndarray:
    """int64 [df]: the items whose title contains `token` (lower-case), sorted."""
    t = self.token_ids.get(token)
    if t is None:
      return np.zeros(0, np.int64)
    return self.post_doc[self.post_ptr[t]:self.post_ptr[t + 1]]

  def score(self, query: str) -> tuple[np.ndarray, np.ndarray]:
    """BM25 of every item sharing a token with `query`: (items int64 [M], float32 [M]).

    Items come in postings order (deterministic, not sorted).
    """
    ids = sorted({self.token_ids[t] for t in vocab.tokenize(query) if t in self.token_ids})
    if not ids:
      return np.zeros(0, np.int64), np.zeros(0, np.float32)
    spans = [slice(self.post_ptr[t], self.post_ptr[t + 1]) for t in ids]
    for s in spans:  # an item occurs once per postings list, so plain fancy-index adds are exact
      self._scratch[self.post_doc[s]] += self.post_weight[s]
    docs = np.concatenate([self.post_doc[s] for s in spans])
    # Dedupe in O(postings) (np.unique sorts or hashes: the bottleneck at millions of items):
    # one write per item survives, so exactly one copy of each item matches its own slot.
    pos = np.arange(len(docs))
    self._slot[docs] = pos
    items = docs[self._slot[docs] == pos]
    scores = self._scratch[items].copy()
    self._scratch[items] = 0.0
    self._slot[items] = -1
    return items, scores

  def search(self, query: str, k: int, allowed: np.ndarray | None = None,
             prior: np.ndarray | None = None) -> np.ndarray:
    """The top-k matching items, best first (ties by item index): int64 [<= k].

    Args:
      query: query text.
      k: number of results.
      allowed: optional bool [N]; items outside it are never returned (e.g. not listed yet).
      prior: optional float32 [N] added to the BM25 score of matching items (a quality boost).
    """
    return top_k(*self.score(query), k, allowed=allowed, prior=prior)


def top_k(items: np.ndarray, scores: np.ndarray, k: int, allowed: np.ndarray | None = None,
          prior: np.ndarray | None = None) -> np.ndarray:
  """The k best of scored items (LexicalIndex.score output), best first, ties by item index.

  Split from `search` so one scoring pass can serve several `allowed` masks.
  """
  if allowed is not None:
    keep = allowed[items]
    items, scores = items[keep], scores[keep]
  if prior is not None:
    scores = scores + prior[items]
  if len(items) > k:
    part = np.argpartition(-scores, k - 1)[:k]
    # Items tied with the k-th score may be cut arbitrarily by argpartition: include them all
    # before the deterministic sort, then cut.
    part = np.flatnonzero(scores >= scores[part].min())
    items, scores = items[part], scores[part]
  order = np.lexsort((items, -scores))[:k]
  return items[order]
