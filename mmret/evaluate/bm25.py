"""BM25 over item titles: the lexical baseline every embedding model is compared against.

DESIGN.md §5 evaluates rankings by Recall@K and Relevance@K; this module produces such a
ranking from text alone with bm25s (Lucene BM25 scoring, sparse precomputed scores). Queries and
titles share one tokeniser: lowercase, Unicode word characters, no stemming and no stopword
list, since product titles are short and words like "for" or "with" carry little weight under
IDF anyway.

A query retrieves only items sharing at least one token with it; the rest of its row is -1
(nothing retrieved), which the metrics treat as an empty slot rather than as item 0.
"""

import re
from collections.abc import Sequence

import bm25s
import numpy as np

_TOKEN = re.compile(r'\w+', re.UNICODE)


def tokenize(text: str) -> list[str]:
  """'Red Midi-Dress, 2pk' -> ['red', 'midi', 'dress', '2pk']."""
  return _TOKEN.findall(text.lower())


class BM25Index:
  """A BM25 index over a catalog's titles; row i of a ranking refers to titles[i].

  Attributes:
    num_items: N, the catalog size.
    vocab: the tokens that occur in some title; query tokens outside it are dropped.
  """

  def __init__(self, titles: Sequence[str], *, k1: float = 1.5, b: float = 0.75):
    self.num_items = len(titles)
    corpus = [tokenize(t) for t in titles]
    self.vocab = frozenset(tok for doc in corpus for tok in doc)
    self._retriever = bm25s.BM25(k1=k1, b=b, method='lucene', backend='numpy')
    if self.vocab:
      # create_empty_token gives title-less items a vocabulary entry, so indexing them works.
      self._retriever.index(corpus, create_empty_token=True, show_progress=False)

  def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query by BM25 score.

    Args:
      queries: [Q] query strings.
      k: items per query.

    Returns:
      scores float32 [Q, k] (descending, -inf in empty slots) and ids int32 [Q, k] (-1 in empty
      slots: the query shares no token with more titles).
    """
    q = len(queries)
    ids = np.full((q, k), -1, np.int32)
    scores = np.full((q, k), -np.inf, np.float32)
    tokens = [[t for t in tokenize(query) if t in self.vocab] for query in queries]
    rows = [i for i, toks in enumerate(tokens) if toks]
    # bm25s refuses k > N and needs >= 1 known token per query; rows without one stay empty.
    width = min(k, self.num_items)
    if not rows or width == 0:
      return scores, ids
    docs, doc_scores = self._retriever.retrieve(
        [tokens[i] for i in rows], k=width, show_progress=False, n_threads=0,
        backend_selection='numpy')
    docs = np.asarray(docs, np.int64)
    doc_scores = np.asarray(doc_scores, np.float32)
    # Lucene IDF is positive, so a zero score means no query token is in that title.
    matched = doc_scores > 0
    ids[rows, :width] = np.where(matched, docs, -1)
    scores[rows, :width] = np.where(matched, doc_scores, -np.inf)
    return scores, ids


def bm25_topk(queries: Sequence[str], titles: Sequence[str], k: int) -> np.ndarray:
  """ids int32 [Q, k]: the BM25 top-k title indices per query, -1 padded."""
  return BM25Index(titles).search(queries, k)[1]
