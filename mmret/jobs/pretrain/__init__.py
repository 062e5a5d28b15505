"""Stage 1: multimodal pre-training for retrieval (DESIGN.md §1), then retrieval evaluation (§5).

  job.py        train_and_evaluate(config, workdir): the whole job
  model.py      the model of a config and its data, its init, restoring a finished run
  data.py       the training input (clicked pairs with their logQ correction)
  objective.py  MLM + MPM + QIC + QIM + QIM2, weighted
  evaluator.py  query/item vectors -> Recall@K etc., and the baselines (random init, BM25)
  config.py     the job's choices and config checks
"""
