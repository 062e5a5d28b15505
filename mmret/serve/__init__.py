"""Use what you trained: load a model from its workdir, encode queries and items, build, save
and load a ScaNN index, search; export a serving directory with a portable query tower.

    from mmret import serve
    model = serve.Model.load('workdir/pretrain_default')    # a finished run's workdir
    q = model.encode_queries(['red floral dress'])           # float32 [Q, D]
    index = serve.Index.build(model.item_vectors, model.item_ids)
    scores, rows = index.search(q, k=10)                     # [Q, 10]; model.item_ids[row]

    serve.export('workdir/pretrain_default', 'serve')        # = python -m mmret.export
    hits = serve.Searcher.load('serve').search(['red floral dress'], k=10)

    recall = serve.Model.load('workdir/recall', variant='gate_add')   # a recall (stage-2) run:
    recall.encode_queries([...]), recall.encode_items(records)         # the same interface

The floor above the jobs (it reads the model directory they write, mmret/train/model_dir.py);
the command lines `python -m mmret.export` / `python -m mmret.search` are in cli.py.
"""

from mmret.serve.index import Index
from mmret.serve.model import Model
from mmret.serve.portable import PortableQueryTower
from mmret.serve.recall import RecallServeModel
from mmret.serve.serving import Hit, Searcher, export

__all__ = ['Hit', 'Index', 'Model', 'PortableQueryTower', 'RecallServeModel', 'Searcher',
           'export']
