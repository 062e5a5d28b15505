r"""Que2Engage: engagement-aware multitask EBR (DESIGN.md §4) on SynthShop.

Variants: `tiny` (tests, seconds), `default` (one full Que2Engage model, CPU), `ablation` (the
source's Table 1: five rows x 3 seeds, one command; ~15 min on 2 CPU cores, see README).

  python -m mmret.launch --config configs/engage.py --workdir /tmp/q2e
  python -m mmret.launch --config configs/engage.py:ablation --workdir /tmp/q2e_ablation
  python -m mmret.launch --config configs/engage.py:tiny --workdir /tmp/q2e_tiny

Rows of the ablation (ABLATION_ROWS below, cumulative, run by the generic sweep of
mmret/jobs/sweep.py): contrastive (no context token, in-batch negatives, relevance loss) ->
context (+ context token) -> mixed_negatives
(+ page negatives in the softmax) -> multitask (lambda = (0.8, 0.2)) -> multitask_dropout
(+ modality dropout delta = (text 0.5, image 0, context 0.5)).
"""

import ml_collections

from mmret.data import synthshop

_VARIANTS = ('tiny', 'default', 'ablation')

# The rows of the source's Table 1, as overrides of the full model (None = the full model's
# value, e.g. its number of page negatives).
ABLATION_ROWS = {
    # Que2Search-like: no context token, in-batch negatives, relevance loss only.
    'contrastive': {
        'model': {'context_token': False,
                  'modality_dropout': {'text': 0.0, 'image': 0.0, 'context': 0.0}},
        'loss': {'mixed_negatives': False, 'weights': {'relevance': 1.0, 'engagement': 0.0}},
        'data': {'num_negatives': 0}},
    'context': {'model': {'context_token': True}},
    'mixed_negatives': {'loss': {'mixed_negatives': True}, 'data': {'num_negatives': None}},
    'multitask': {'loss': {'weights': {'relevance': 0.8, 'engagement': 0.2}}},
    'multitask_dropout': {'model': {'modality_dropout': {'text': 0.5, 'image': 0.0,
                                                         'context': 0.5}}},
}
ABLATION_ORDER = ('contrastive', 'context', 'mixed_negatives', 'multitask', 'multitask_dropout')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or 'default'
  if variant not in _VARIANTS:
    raise ValueError(f'configs/engage.py: unknown variant {variant!r}; choose from {_VARIANTS}.')
  tiny = variant == 'tiny'
  c = ml_collections.ConfigDict()
  c.job = 'engage'
  c.variant = variant
  c.seed = 0
  c.log_prefix = ''  # printed before each metrics line (the ablation names its runs)

  c.data = ml_collections.ConfigDict()
  c.data.source = 'synthshop'
  c.data.synthshop_size = 'tiny' if tiny else 'small'
  c.data.synthshop = synthshop.default_config(c.data.synthshop_size)
  c.data.cache_dir = '~/.cache/mmret'
  c.data.image_size = 32
  c.data.query_len = 12
  c.data.title_len = 24
  c.data.tokenizer = 'train'  # WordPiece trained on the catalog + train queries (small table)
  c.data.vocab_size = 2000 if tiny else 4000
  c.data.process_sharding = 'per_process'
  # Judged data (docs/DATA.md): `relevance` grades are numbers >= 0, or labels mapped to numbers
  # here ('Exact=3,Substitute=2,Complement=1,Irrelevant=0'); a pair graded below `threshold` is
  # judged irrelevant and never a positive, whatever its clicks.
  c.data.relevance = ml_collections.ConfigDict({'labels': '', 'threshold': 1.0})
  c.data.max_trigrams = 24
  # H: page negatives (impressed, not engaged, same page) per engaged pair.
  c.data.num_negatives = 2 if tiny else 3
  c.data.max_page_negatives = 32  # kept per page; each pass draws H of them

  c.model = ml_collections.ConfigDict()
  # The vocabulary comes from the tokenizer; its table is padded to a multiple of this.
  c.model.vocab_pad_multiple = 128
  # The shared encoder (mmret.encoders.transformer), trained from scratch at a CPU size.
  c.model.width = 32 if tiny else 64
  c.model.depth = 1 if tiny else 2
  c.model.heads = 4
  c.model.mlp_dim = 64 if tiny else 256
  c.model.max_len = 64
  c.model.dropout = 0.0  # a few hundred steps from scratch: dropout only slows learning
  c.model.dtype = 'float32'
  # 'fused' (jax.nn.dot_product_attention) | 'einsum' (the reference); same function.
  c.model.attention = 'fused'
  c.model.remat = False
  c.model.remat_policy = 'nothing_saveable'  # a jax.checkpoint_policies name, used with remat
  c.model.scan = False
  c.model.share_encoder = True   # one encoder for the query text and the document fusion
  c.model.trigram_buckets = 1024 if tiny else 8192
  c.model.mlp_hidden = 64 if tiny else 128
  c.model.out_dim = 32 if tiny else 64
  # Image encoder of the document tower (mmret.encoders.image.PatchEncoder, trained with the
  # model): 'linear' (ViT patch embedding) | 'resnet' (small ResNet per patch) | 'features'
  # (precomputed batch['image_features'] [N, M, F]). Its patch tokens are mean-pooled into one
  # embedding per image, then the shared MLP and the deep-sets fusion over the item's images.
  # 'linear' on CPU: a train step (batch 32 x 4 items) took 95 ms with it and 444 ms with the
  # 16-channel one-block ResNet, measured back to back (2-core CPU shared with other jobs,
  # 2026-11-24): the ResNet would make the 15-run ablation ~4x longer. Against the former
  # fixed pooled-pixel feature: 49-51 ms versus 48 ms per step, back to back.
  c.model.image_encoder = 'linear'
  c.model.patch_size = 8           # 32x32 image -> 16 patches of 8x8
  c.model.resnet_channels = 8 if tiny else 16
  c.model.resnet_blocks = 1
  c.model.resnet_groups = 4
  c.model.context_token = True
  c.model.context_log = True       # signed log1p before BatchNorm (prices are heavy-tailed)
  c.model.bn_momentum = 0.9 if tiny else 0.99
  c.model.modality_dropout = ml_collections.ConfigDict(dict(text=0.5, image=0.0, context=0.5))

  c.loss = ml_collections.ConfigDict()
  c.loss.weights = ml_collections.ConfigDict(dict(relevance=0.8, engagement=0.2))
  c.loss.scale = 20.0            # s: logits = s * cos
  c.loss.mixed_negatives = True  # in-batch + page negatives in the relevance softmax

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8 if tiny else 32
  c.train.num_steps = 4 if tiny else 600  # ~1.8 epochs of the 10.9k engaged train pairs
  c.train.log_every = 2 if tiny else 100
  c.train.rng_impl = 'rbg'
  c.train.checkpoint_every = 2 if tiny else 200

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'          # the source: Adam, lr 4e-4 at batch 512
  c.optim.lr = 3e-3  # small model, batch 32, few steps (3e-3 beat 1e-3 on SynthShop small)
  c.optim.final_lr_ratio = 0.1
  c.optim.warmup_steps = 1 if tiny else 20
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (10, 100) if variant != 'default' else (10, 50, 100, 1000)
  c.eval.batch_size = 32 if tiny else 256
  c.eval.scann = True
  # ScaNN parameters: None keeps the size rule of mmret.evaluate.search.scann_params (a tree
  # from 50k items, exhaustive below 10k); e.g. --config.eval.scann_params.leaves_to_search=40.
  c.eval.scann_params = ml_collections.ConfigDict({
      name: ml_collections.config_dict.placeholder(int)
      for name in ('num_leaves', 'leaves_to_search', 'reorder', 'training_sample_size')})
  c.eval.relevant_min_grade = 2  # relevance AUC: grade 2 (exact) relevant; 0 and 1 not

  # The ablation of the source's Table 1 (mmret/jobs/sweep.py): five rows x 3 seeds, each row
  # adding its overrides to those above it. `sweep.rows` empty = one model.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.title = 'Que2Engage ablation: AUC, then with one modality removed at inference'
  c.sweep.order = ABLATION_ORDER
  c.sweep.rows = ABLATION_ORDER if variant == 'ablation' else ()
  c.sweep.overrides = ml_collections.ConfigDict(ABLATION_ROWS)
  c.sweep.cumulative = True
  c.sweep.seeds = (0, 1, 2)
  c.sweep.tables = (('engagement_auc', 'relevance_auc'),
                    ('no_text/engagement_auc', 'no_text/relevance_auc'),
                    ('no_image/engagement_auc', 'no_image/relevance_auc'),
                    ('no_context/engagement_auc', 'no_context/relevance_auc'))
  c.sweep.compilation_cache = True  # seeds of a row compile the same programs: compile once

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)
  c.mesh.axes = ('data', 'model')
  c.axis_rules = (
      ('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
      ('embed', None), ('kv', None), ('length', None), ('patch', None), ('classes', None),
      ('context', None))
  return c
