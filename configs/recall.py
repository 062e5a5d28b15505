r"""Stage 2: vector recall (DESIGN.md §2) with sharded ID tables, sampled softmax and the gated
ID/content fusion of §3, on the vectors of a stage-1 run (configs/pretrain.py).

Variants: `tiny` (tests, seconds: stage 1 is configs/pretrain.py:tiny, run into
<workdir>/stage1) and `default` (the CPU demo; it reuses the stage-1 run of
`python -m mmret.launch` in workdir/pretrain_default, or runs it there first).

  python -m mmret.launch                      # stage 1 first (optional: run here if missing)
  python -m mmret.launch --config configs/recall.py --workdir workdir/recall_default
  python -m mmret.launch --config configs/recall.py:tiny --workdir /tmp/mmret_recall_tiny
  python -m mmret.launch --config configs/recall.py --config.variants='("add","gate_add")'
"""

import pathlib

import ml_collections

from mmret.config import load_config

_VARIANTS = ('tiny', 'default')
_PRETRAIN = pathlib.Path(__file__).resolve().parent / 'pretrain.py'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or 'default'
  if variant not in _VARIANTS:
    raise ValueError(f'configs/recall.py: unknown variant {variant!r}; choose from {_VARIANTS}.')
  tiny = variant == 'tiny'
  c = ml_collections.ConfigDict()
  c.job = 'recall'
  c.variant = variant
  c.seed = 0

  # The stage-1 job whose vectors are the frozen inputs; its `data` is the recall job's data.
  c.stage1 = load_config(f'{_PRETRAIN}:{variant}')
  if tiny:
    c.stage1.eval.baselines = ()
  # '' = <workdir>/stage1. The default is where `python -m mmret.launch` puts stage 1.
  c.stage1_workdir = '' if tiny else 'workdir/pretrain_default'

  # Fusions trained and evaluated one after the other (mmret/towers/recall.py FUSIONS):
  # id_only, mm_only, add, concat, gate_add, gate_concat.
  c.variants = ('id_only', 'mm_only', 'add', 'concat', 'gate_add', 'gate_concat')

  c.model = ml_collections.ConfigDict()
  c.model.dim = 16 if tiny else 64
  c.model.gate_hidden = 16
  c.model.use_category = False  # category embedding in the content / MM part

  c.ids = ml_collections.ConfigDict()
  # Unseen IDs (eval-only queries, items without a train impression) hash into these buckets;
  # 0 sends them all to the OOV row.
  c.ids.query_buckets = 64 if tiny else 1024
  c.ids.item_buckets = 64 if tiny else 1024
  c.ids.init_scale = 0.05

  c.negatives = ml_collections.ConfigDict()
  c.negatives.num = 64 if tiny else 10_000  # one shared set per step
  c.negatives.smoothing = 1.0               # q ∝ train clicks + smoothing

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.05
  c.loss.logq_correction = True
  c.loss.view_weight = 0.1       # gated fusion: each view against the query tower
  c.loss.triplet_weight = 0.1    # gated fusion: triplet between an item's two views
  c.loss.triplet_margin = 0.5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8 if tiny else 128
  c.train.num_steps = 4 if tiny else 300
  c.train.log_every = 2 if tiny else 50
  c.train.checkpoint_every = 2 if tiny else 100
  # Cold-start dropout (DropoutNet, Volkovs et al. 2017; mmret/jobs/recall/step.py): each item
  # occurrence of a step (positive or sampled negative) is, with this probability, presented as
  # a cold item is at eval: zero statistics and the ID row its ID would hash to if unseen, its
  # own row not updated. Cold items (no train impression) otherwise give the gate an input it
  # never saw in training. In [0, 1]; 0 disables (the step is then the one without it).
  c.train.cold_dropout = 0.2
  # The fusions it applies to. Default: the gated ones, whose gate reads the statistics and can
  # learn to fall back to content. `add` / `concat` take it too (no gate: it only teaches them
  # that the ID input may be uninformative, the "ID dropout" the Guangguang source calls
  # suboptimal); offer it to them with '("add","concat","gate_add","gate_concat")' for the
  # fair comparison. id_only would only see noise; mm_only has no ID input (ignored there).
  # SynthShop, 3 seeds (docs/PERFORMANCE.md): 0.2 lifts gate_add's cold R@100 0.513 -> 0.588 and
  # gate_concat's 0.311 -> 0.565; on add it lowers cold 0.599 -> 0.537, hence the default.
  c.train.cold_dropout_fusions = ('gate_add', 'gate_concat')

  c.optim = ml_collections.ConfigDict()  # dense towers (optax)
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.final_lr_ratio = 0.1
  c.optim.warmup_steps = 1 if tiny else 20
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_norm = 0.0

  c.id_optim = ml_collections.ConfigDict()  # ID tables: row-sparse (mmret/embeddings)
  c.id_optim.name = 'rowwise_adagrad'       # or 'adam' (lazy, per-element moments)
  c.id_optim.lr = 0.01
  c.id_optim.eps = 1e-8
  c.id_optim.b1 = 0.9
  c.id_optim.b2 = 0.999
  c.id_optim.initial_accumulator = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (10, 50, 100, 1000)
  c.eval.batch_size = 64 if tiny else 1024
  c.eval.scann = True
  # ScaNN parameters: None keeps the size rule of mmret.evaluate.search.scann_params (a tree
  # from 50k items, exhaustive below 10k); e.g. --config.eval.scann_params.leaves_to_search=40.
  c.eval.scann_params = ml_collections.ConfigDict({
      name: ml_collections.config_dict.placeholder(int)
      for name in ('num_leaves', 'leaves_to_search', 'reorder', 'training_sample_size')})
  c.eval.head_click_share = 0.5  # head = most-clicked items holding this share of train clicks

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)
  c.mesh.axes = ('data', 'model')
  # ID tables, their optimizer slots and the frozen per-row inputs: rows over `data`.
  c.axis_rules = (('batch', 'data'), ('ids', 'data'), ('embed', None))
  return c
