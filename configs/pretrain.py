r"""Stage 1: multimodal pre-training (Taobao main-search design, DESIGN.md §1) on SynthShop.

Variants: `tiny` (tests, seconds), `default` (the CPU demo run by `python -m mmret.launch`),
`base` (BERT-base width, for accelerators), `two_tower` (`base` with the in-batch contrastive
task only, query 16 + item 64 tokens: the work of a PyTorch two-tower, for bench/gpu.sh).
Sweeps (mmret/jobs/sweep.py; each row x seeds 0, 1, 2, mean ± std, every row one change from
`default`, ABLATION_ROWS below):
  `seeds`        the default recipe, 3 seeds: its margin over the untrained initialisation
                 (`lift/...`, `select/lift`) with its spread;
  `ablation`     the stage-1 ablation of the source (QIC sigmoid / softmax / AM-Softmax, mean vs
                 [CLS] pooling, with vs without L2, MLM back on, each other auxiliary task off),
                 the source's most-clicked positives, the images withheld, the encoder at the
                 previous default rate 2e-4, and the recipe before issue 14;
  `small_label`  the text-only small-label regime (40 judged queries, 13 for training, names in
                 plain words: where the old recipe ends below its initialisation), default
                 recipe and old recipe, 3 seeds.

  python -m mmret.launch                                   # = configs/pretrain.py:default
  python -m mmret.launch --config configs/pretrain.py:tiny --workdir /tmp/mmret_tiny
  python -m mmret.launch --config configs/pretrain.py:base --config.data.synthshop_size=large
  python -m mmret.launch --config.data.source=/path/to/byod_dir   # your own data (docs/DATA.md)
  python -m mmret.launch --config configs/pretrain.py:ablation --workdir workdir/pretrain_ablation
  python -m mmret.launch --config configs/pretrain.py:ablation "--config.sweep.rows=('mlm',)"
"""

import ml_collections

from mmret.data import synthshop

_VARIANTS = ('tiny', 'default', 'base', 'two_tower', 'seeds', 'ablation', 'small_label')
_SWEEPS = ('seeds', 'ablation', 'small_label')

# Rows of the stage-1 sweeps: each row is `default` plus its overrides (not cumulative).
_OFF = 0.0
ABLATION_ROWS = {
    'default': {},
    # QIC loss: the source reports sigmoid < softmax < AM-Softmax (DESIGN.md §1).
    'qic_sigmoid': {'loss': {'qic': 'sigmoid'}},
    'qic_softmax': {'loss': {'qic': 'softmax'}},
    # Pooling of the retrieval vector: the source finds mean pooling better than [CLS].
    'cls_pooling': {'model': {'pooling': 'cls'}},
    # L2 normalisation of the retrieval vectors (QIC's projection is always normalised).
    'no_l2': {'model': {'normalize': False}},
    # MLM on, as before 2026-12-04: the default fine-tunes without it (README, 3 seeds).
    'mlm': {'loss': {'weights': {'mlm_query': 1.0, 'mlm_title': 1.0}}},
    # Each other auxiliary task off (its weight 0: not computed at all).
    'no_mpm': {'loss': {'weights': {'mpm': _OFF}}},
    'no_qim': {'loss': {'weights': {'qim': _OFF}}},
    'no_qim2': {'loss': {'weights': {'qim2': _OFF}}},
    # The source's positives: the most-clicked item of each query (DESIGN.md §1).
    'most_clicked': {'data': {'positives': 'most_clicked'}},
    # Images withheld (every item without one; image tasks switch themselves off): what the
    # picture adds, same steps.
    'text_only': {'data': {'synthshop': {'catalog': {'missing_image_share': 1.0}}}},
    # The imported encoder at the previous default rate (1e-4 is the default: README, issue 14).
    'encoder_lr_2e-4': {'optim': {'pretrained_lr': 2e-4}},
    # The recipe before issue 14: one learning rate for everything, the last step, no judged
    # negatives.
    'old_recipe': {'optim': {'pretrained_lr': _OFF}, 'select': {'every': 0},
                   'loss': {'judged_negatives': 0,
                            'weights': {'mlm_query': 1.0, 'mlm_title': 1.0}}},
}
ABLATION_ORDER = ('default', 'qic_sigmoid', 'qic_softmax', 'cls_pooling', 'no_l2', 'mlm',
                  'no_mpm', 'no_qim', 'no_qim2', 'most_clicked', 'text_only', 'encoder_lr_2e-4',
                  'old_recipe')
_SWEEP_ROWS = {'seeds': ('default',), 'ablation': ABLATION_ORDER,
               'small_label': ('default', 'old_recipe')}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or 'default'
  if variant not in _VARIANTS:
    raise ValueError(f'configs/pretrain.py: unknown variant {variant!r}; choose from {_VARIANTS}.')
  sweep = variant if variant in _SWEEPS else None
  if sweep:
    variant = 'default'
  tiny, base = variant == 'tiny', variant in ('base', 'two_tower')
  c = ml_collections.ConfigDict()
  c.job = 'pretrain'
  c.variant = variant
  c.seed = 0
  c.log_prefix = ''  # printed before each metrics line (a sweep names its runs)

  c.data = ml_collections.ConfigDict()
  # 'synthshop' (generated, cached) or a directory in the bring-your-own-data format.
  c.data.source = 'synthshop'
  c.data.synthshop_size = 'tiny' if tiny else ('large' if base else 'small')
  c.data.synthshop = synthshop.default_config(c.data.synthshop_size)
  c.data.cache_dir = '~/.cache/mmret'  # generated data, TFDS files and trained tokenizers
  c.data.image_size = 32
  c.data.query_len = 12
  c.data.title_len = 32 if base else 24  # SynthShop titles: 90% <= 18 WordPiece tokens
  # 'minilm' (the vocabulary of the pretrained text encoder), 'train' (WordPiece trained on the
  # catalog and queries) or a path to vocab.txt / tokenizer.json.
  c.data.tokenizer = 'train' if tiny else 'minilm'
  c.data.vocab_size = 2000 if tiny else 8000
  # Multi-process input: 'per_process' (each process reads its own shard, batch / processes
  # rows: scales) or 'global_batch' (each process reads the whole global batch and keeps its
  # rows: the batches, and so the run, do not depend on the number of processes).
  c.data.process_sharding = 'per_process'
  # Grain worker processes making the training batches (0: in the training process). The
  # batches are the same whatever the count (mmret/data/pipelines.py). One core makes ~2,000
  # `default` examples/s (docs/PERFORMANCE.md): an accelerator host needs a few.
  c.data.workers = 0
  # Length bucketing of the training batches (mmret/data/length_buckets.py): query and title
  # tokens cut, per batch, to the shortest multiple of this that holds the longest row; each
  # length is its own compiled step. 0: fixed lengths. `base` (accelerators, FLOP-bound): 4,
  # title and query slots 32 + 12 -> mostly 20 + 8 on SynthShop. `default` and `tiny` (CPU,
  # compile-bound: a second compile costs more than the slots save in 200 steps) and
  # `two_tower` (the peer's fixed padding, for a like-for-like comparison): 0.
  c.data.length_multiple = 4 if variant == 'base' else 0
  # Judged data (docs/DATA.md): `relevance` grades are numbers >= 0, or labels mapped to numbers
  # here ('Exact=3,Substitute=2,Complement=1,Irrelevant=0'); a pair graded below `threshold` is
  # judged irrelevant and never a positive, whatever its clicks.
  c.data.relevance = ml_collections.ConfigDict({'labels': '', 'threshold': 1.0})
  # Stage-1 training pairs (mmret/data/positives.py): 'all' positive pairs, or the source's
  # 'most_clicked' item per query (DESIGN.md §1). 'all' is the default by a 3-seed comparison
  # (README: Recall@100 0.699 +- 0.019 against 0.667 +- 0.006, at encoder rate 2e-4).
  c.data.positives = 'all'

  c.model = model_config(variant)

  c.loss = ml_collections.ConfigDict()
  # Fine-tuning the imported MiniLM (`default`) drops the source's MLM tasks: over 3 seeds MLM
  # made every SynthShop column worse (nDCG@10 0.868 +- 0.004 with it, 0.899 +- 0.008 without)
  # and the text-only small-label regime's Recall@100 too (README, ablation row `mlm`). The
  # source pre-trains from scratch, where MLM teaches the encoder language: `tiny` and `base`
  # (random init) keep it.
  mlm = 0.0 if variant == 'default' else 1.0
  c.loss.weights = ml_collections.ConfigDict(dict(
      mlm_query=mlm, mlm_title=mlm, mpm=1.0, qic=1.0, qim=1.0, qim2=1.0))
  c.loss.qic = 'am_softmax'  # 'sigmoid' | 'softmax' | 'am_softmax' (the source's order, best last)
  c.loss.temperature = 0.05  # softmax
  c.loss.scale = 20.0        # AM-Softmax s
  c.loss.margin = 0.1        # AM-Softmax m
  c.loss.symmetric = True    # QIC in both directions (query->item and item->query)
  # Subtract log q(item) from QIC logits: in-batch negatives are drawn by clicks, and without the
  # correction the model learns to push popular items down (Yi et al. 2019).
  c.loss.logq_correction = True
  # Judged-irrelevant items of each row's query added to QIC's in-batch negatives, H per row
  # (mmret/data/judged.py); only when the train split holds judged-irrelevant pairs. 0 = off.
  c.loss.judged_negatives = 1

  c.train = ml_collections.ConfigDict()
  # The CPU default is sized to finish in about 7 minutes on 2 cores (README) and to beat BM25
  # on Recall@100 there (80 steps only tie it); base is for accelerators.
  c.train.batch_size = 8 if tiny else (256 if base else 32)
  c.train.num_steps = 4 if tiny else (20_000 if base else 200)
  c.train.log_every = 2 if tiny else (100 if base else 10)
  # PRNG of dropout and masking: 'rbg' (XLA's RngBitGenerator) compiles several times faster than
  # 'threefry2x32' on CPU; both are deterministic given the seed.
  c.train.rng_impl = 'rbg'
  c.train.checkpoint_every = 2 if tiny else (1000 if base else 100)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3 if tiny else (2e-4 if base else 5e-4)
  # Peak learning rate of imported weights (model.text_init='minilm'); `lr` then applies to the
  # freshly initialised heads only. 0 = one learning rate for everything. 1e-4, measured over 3
  # seeds (README, issue 14): on the text-only small-label regime 2e-4 left Recall@100 flat
  # against the initialisation (+0.001 +- 0.035) and 1e-4 beats it on every seed and column
  # (+0.040 +- 0.011); on SynthShop's default run both are within seed noise of each other
  # (Recall@100 0.701 +- 0.012 at 1e-4, 0.699 +- 0.019 at 2e-4). 3e-5 cost SynthShop
  # Recall@100 0.69 -> 0.63; one rate of 5e-4 made a run on 12 judged queries worse than its
  # initialisation.
  c.optim.pretrained_lr = 1e-4
  c.optim.final_lr_ratio = 0.1
  c.optim.warmup_steps = 1 if tiny else (1000 if base else 15)
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0
  # First-moment dtype: '' keeps float32; 'bfloat16' halves its memory (accelerators).
  c.optim.mu_dtype = ''

  # Model selection (mmret/train/selection.py): `share` of the training queries (by a fixed
  # hash, never an eval query) is held out of training; at initialisation, every `every` steps
  # and at the last, the model is validated on them by `metric` (an eval key, exact search) and
  # the best of those, the initialisation included, is evaluated and saved. 0 = off: the last
  # step is the model.
  c.select = ml_collections.ConfigDict()
  c.select.every = 0 if tiny else (1000 if base else 50)
  c.select.share = 0.1
  # A floor on the held-out queries: at least min(min_queries, a quarter of the candidates),
  # topped up in the same hash order (mmret/data/validation.py); 10% of a small log is too few
  # queries to tell a better step from noise (9 on SynthShop's default run).
  c.select.min_queries = 50
  c.select.metric = 'recall@100'

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (10, 50, 100, 1000)
  c.eval.batch_size = 32 if tiny else 256
  c.eval.scann = True
  # ScaNN parameters: None keeps the size rule of mmret.evaluate.search.scann_params (a tree
  # from 50k items, exhaustive below 10k); e.g. --config.eval.scann_params.leaves_to_search=40.
  c.eval.scann_params = ml_collections.ConfigDict({
      name: ml_collections.config_dict.placeholder(int)
      for name in ('num_leaves', 'leaves_to_search', 'reorder', 'training_sample_size')})
  # Baselines reported beside the trained model (names: 'bm25', 'random_init').
  # pretrained_init: the model as initialised (the imported text encoder, untrained), the
  # baseline a pretrained encoder must beat; evaluated when model.text_init imports weights.
  c.eval.baselines = ('bm25', 'pretrained_init', 'random_init')

  # Data parallel over all devices by default; `model` shards vocab/mlp/heads when > 1.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)
  c.mesh.axes = ('data', 'model')
  c.axis_rules = (
      ('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
      ('embed', None), ('kv', None), ('length', None), ('patch', None), ('classes', None))
  if variant == 'two_tower':
    two_tower(c)
  if sweep == 'small_label':
    small_label(c)
  c.sweep = sweep_config(sweep)
  if sweep:
    # Each seed has its own untrained baseline (the heads and image tower are seeded); BM25
    # and random init do not depend on the recipe: the default run reports them.
    c.eval.baselines = ('pretrained_init',)
  return c


def sweep_config(sweep: str | None) -> ml_collections.ConfigDict:
  """The `sweep` section (mmret/jobs/sweep.py); no rows = one run."""
  s = ml_collections.ConfigDict()
  s.title = f'Stage-1 {sweep or "ablation"}: each row one change from the default recipe'
  s.order = ABLATION_ORDER
  s.rows = _SWEEP_ROWS[sweep] if sweep else ()
  s.overrides = ml_collections.ConfigDict(ABLATION_ROWS)
  s.cumulative = False
  s.seeds = (0, 1, 2)
  s.tables = (('recall@100/exact', 'ndcg@10', 'ndcg@10/judged', 'recall@100/image_only'),
              ('lift/recall@100/exact', 'lift/ndcg@10', 'lift/ndcg@10/judged', 'select/lift'),
              ('baseline/pretrained_init/recall@100/exact', 'baseline/pretrained_init/ndcg@10',
               'select/initial_score', 'select/best_step'))
  s.compilation_cache = True  # seeds of a row compile the same programs: compile once
  return s


def small_label(c: ml_collections.ConfigDict) -> None:
  """The text-only small-label regime of SynthShop (README, *Where training hurts*): 40 judged
  queries (no clicks), 70% of them eval queries, images withheld, queries and titles naming
  their attributes plainly (the untrained MiniLM is already good), 150 steps, exact search."""
  s = c.data.synthshop
  s.judged.num_queries = 40
  s.judged.eval_share = 0.7
  s.catalog.missing_image_share = 1.0
  s.text.query_canonical_prob = 1.0
  s.text.title_canonical_prob = 1.0
  s.text.omit_color_prob = 0.0
  s.text.omit_pattern_prob = 0.0
  c.train.num_steps = 150
  c.eval.scann = False


def two_tower(c: ml_collections.ConfigDict) -> None:
  """The two-tower mode: in-batch softmax over the pooled, L2-normalised query and item vectors
  of the shared encoder (QIC only; a task with weight 0 is not computed at all), one direction,
  no logQ correction, no judged negatives: the work of the usual PyTorch two-tower
  (bench/peer_torch_twotower.py). Query 16 tokens; item 48 title tokens + 16 image patches = 64.
  """
  c.data.query_len = 16
  c.data.title_len = 48
  c.loss.weights = ml_collections.ConfigDict(
      dict(mlm_query=0.0, mlm_title=0.0, mpm=0.0, qic=1.0, qim=0.0, qim2=0.0))
  c.loss.qic = 'softmax'
  c.loss.temperature = 0.05  # logits x 20, as the peer's
  c.loss.symmetric = False
  c.loss.logq_correction = False
  c.loss.judged_negatives = 0


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The `model` section (mmret.towers.pretrain.PretrainModel) of a variant:
    'tiny'     tests: width 32, 2 shared layers, 1 cross-modal layer, random init.
    'default'  CPU demo: the all-MiniLM-L6-v2 shape (384 wide, 6 layers, 12 heads, MLP 1536),
               initialised from MiniLM, 1 cross-modal layer.
    'base'     BERT-base shape (768 / 12 layers / 12 heads / 3072), 2 cross-modal layers.
  The vocabulary size and [MASK] id come from the tokenizer (data.tokenizer), not from here.
  """
  tiny, base = variant == 'tiny', variant in ('base', 'two_tower')
  c = ml_collections.ConfigDict()
  # 'minilm': copy all-MiniLM-L6-v2 into the shared encoder (needs the MiniLM shape and
  # vocabulary); 'random': BERT-style random init.
  c.text_init = 'random' if tiny else ('minilm' if variant == 'default' else 'random')
  # Embedding / MLM-output rows are vocab_size rounded up to this multiple, so that a `model`
  # mesh axis of any size dividing it can shard them (the extra rows are never looked up).
  c.vocab_pad_multiple = 128

  # Shared (query + item tower) encoder.
  c.width = 32 if tiny else (768 if base else 384)
  c.depth = 2 if tiny else (12 if base else 6)
  c.heads = 4 if tiny else 12
  c.mlp_dim = 64 if tiny else (3072 if base else 1536)
  c.max_len = 64 if tiny else 512
  c.dropout = 0.1
  # Dropout on the attention weights (None: `dropout`, BERT's recipe). base drops it, keeping
  # hidden dropout: the fused kernel has no attention-weight dropout, so with it on, training
  # takes the einsum path (materialised [B, H, L, L] weights) at every layer.
  c.attention_dropout = (0.0 if base else
                         ml_collections.config_dict.placeholder(float))
  c.dtype = 'bfloat16' if base else 'float32'  # compute dtype; params are always float32
  # 'fused': jax.nn.dot_product_attention (training with dropout > 0 keeps the einsum path: the
  # fused API has no attention-weight dropout); 'einsum': the two-einsum reference.
  c.attention = 'fused'
  # The item-side passes of a train step (the masked item, QIM2's title-less item, the judged
  # negatives) run as one encoder call, and QIM and QIM2 as one cross-modal call, concatenated
  # along the batch: the same maths (tests/test_towers.py), one compiled layer stack per
  # encoder instead of three; QIM2's rows then carry the title slots, masked (more FLOPs for
  # that pass, docs/PERFORMANCE.md).
  c.share_calls = True
  # One shared-encoder call per step instead of two (with share_calls): the query rows (with
  # QIM2's packed in) padded to the item rows' length and concatenated with them along the batch
  # (mmret/towers/packing.py). Same maths (tests/test_shared_calls.py) but other dropout draws.
  # `default` (MLM off) compiles its first step in 12.7 s against 32.6 s before issue 12 (2-core
  # CPU, idle) for 3% more FLOPs, and its 3 seeds end within noise of two calls (Recall@100
  # 0.702 +- 0.002 against 0.710 +- 0.008; README, docs/PERFORMANCE.md). `base` keeps two
  # calls: on an accelerator the step is FLOP-bound and the query rows padded to the title
  # length would be FLOPs spent on padding.
  c.single_call = not base
  c.remat = base
  # What remat keeps (a jax.checkpoint_policies name): nothing, the least activation memory.
  c.remat_policy = 'nothing_saveable'
  # nn.scan over the layers of each encoder call: the same maths (tests/test_encoders.py), and
  # XLA compiles one layer per call instead of `depth`. base's first step (batch 8, 2-core CPU)
  # compiled in 47 s instead of 92 s; default's did not get faster (34 s either way), so it
  # keeps the per-layer layout (docs/PERFORMANCE.md, issue 12).
  c.scan = base
  # Cross-modal encoder (same width / heads / MLP as the shared encoder, its own weights).
  c.cross_depth = 2 if base else 1

  # Image patch tokens.
  c.image_encoder = 'linear' if tiny else 'resnet'  # 'resnet' | 'linear' | 'features'
  c.patch_size = 8
  c.resnet_channels = 8 if tiny else 32
  c.resnet_blocks = 1 if tiny else 2
  c.resnet_groups = 4 if tiny else 8
  c.patch_feature_dim = 0  # F of batch['patch_features'] ('features' mode only)

  # Retrieval vectors.
  c.pooling = 'mean'       # 'mean' (source's choice) | 'cls'
  c.normalize = True       # L2-normalise query_vec / item_vec ('encoder' space; 'qic' always is)
  # 'encoder': the pooled encoder output (D-dim) is the retrieval vector, as the source extracts
  # it; 'qic': its 256-d QIC projection, the space the in-batch contrastive loss trains.
  c.retrieval_space = 'encoder'

  c.qic_dim = 16 if tiny else 256

  # Pre-training tasks.
  c.mlm_prob = 0.15
  # Gathered MLM positions per sequence: about 15% of the typical length, plus one.
  c.mlm_max_predictions_query = 3 if variant == 'default' else 4
  c.mlm_max_predictions_title = 5 if variant == 'default' else 8
  c.mpm_prob = 0.25
  c.mpm_max_predictions = 8
  c.mpm_classes = 8 if tiny else 64
  c.mpm_grid = 2            # colour feature: grid x grid cells x RGB per patch
  c.mpm_temperature = 0.05  # of the soft assignment to the codebook (squared distances)
  return c
