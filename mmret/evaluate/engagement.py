"""The engagement evaluator (Que2Engage, DESIGN.md §4): ROC-AUCs over labelled impressions and
Recall@K, for the full model and with one modality removed from every document.

    evaluator = EngagementEvaluator(impressions, eval_set, ks=(10, 100), scann=True,
                                    relevant_min_grade=2, removals=[(), ('text',), ('image',)])
    metrics = evaluator.run(query_vectors_fn, item_vectors_fn)

  query_vectors_fn(texts) -> float [Q, E]      the query tower over any list of query strings
  item_vectors_fn(remove) -> float [N, E]      the catalog, with the modalities in `remove`
                                               marked absent for every item

Metrics, each also as 'no_<modality>/<metric>' for every non-empty removal:
  engagement_auc   ROC-AUC of cos(q, d) against the engagement label over every labelled
                   impression (engaged vs impressed-but-not-engaged);
  relevance_auc    ROC-AUC of cos(q, d) over the same impressions against graded relevance:
                   relevant = logged grade >= relevant_min_grade, ungraded ones left out;
  recall@K, recall@K/exact, ...   mmret.evaluate.retrieval (ScaNN for the full model only;
                   with a modality removed only the recall@K keys are kept).
The impressions are duck-typed: query [I] strings, item int [I], engaged bool [I],
relevance int [I] (-1 = ungraded).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmret.evaluate import metrics as metrics_lib
from mmret.evaluate import retrieval


class EngagementEvaluator:
  """See the module docstring."""

  def __init__(self, impressions: Any, eval_set: Any, *, ks: Sequence[int], scann: bool,
               relevant_min_grade: int, removals: Sequence[tuple[str, ...]] = ((),),
               scann_params: Mapping[str, int | None] | None = None):
    if not impressions.query:
      raise ValueError('no labelled eval-day impression: the engagement AUC needs an eval split '
                       '(docs/DATA.md, split rule) with click/purchase/engaged labels.')
    self.impressions, self.eval_set = impressions, eval_set
    self.ks, self.scann = tuple(ks), scann
    self.relevant_min_grade = relevant_min_grade
    self.removals = [tuple(r) for r in removals]
    self.scann_params = scann_params  # overrides of search.scann_params (RetrievalEvaluator)

  def run(self, query_vectors_fn: Callable[[list[str]], np.ndarray],
          item_vectors_fn: Callable[[tuple[str, ...]], np.ndarray]) -> dict[str, float]:
    imp, eval_set = self.impressions, self.eval_set
    texts = list(dict.fromkeys(list(eval_set.queries) + imp.query))
    pos = {q: i for i, q in enumerate(texts)}
    queries = query_vectors_fn(texts)
    imp_q = queries[np.array([pos[q] for q in imp.query])]
    recall_q = queries[np.array([pos[q] for q in eval_set.queries], np.int64)]
    graded = imp.relevance >= 0
    relevant = imp.relevance >= self.relevant_min_grade
    results = {}
    for remove in self.removals:
      prefix = ''.join(f'no_{m}/' for m in remove)
      items = item_vectors_fn(remove)
      scores = np.sum(imp_q * items[imp.item], axis=1)                     # cos, [I]
      results[prefix + 'engagement_auc'] = metrics_lib.roc_auc(scores, imp.engaged)
      results[prefix + 'relevance_auc'] = metrics_lib.roc_auc(scores, relevant, where=graded)
      evaluator = retrieval.RetrievalEvaluator(eval_set, ks=self.ks,
                                               scann=self.scann and not remove,
                                               scann_params=self.scann_params)
      for k, v in evaluator.run(recall_q, items).metrics.items():
        if not prefix or k.startswith('recall@'):
          results[prefix + k] = v
    return results
