"""The stage-2 recall model (DESIGN.md §2) and the gated ID/content fusion (§3).

Inputs are per-example arrays; the ID embeddings arrive already gathered from the row-sharded
tables (mmret/embeddings), so that the train step can differentiate just those rows:

  query side: q_id [B, d] (query-ID embedding), q_mm [B, E] (frozen stage-1 query vector)
  item side:  i_id [M, d] (item-ID embedding),  i_mm [M, E] (frozen stage-1 item vector),
              stats [M, 3] (log1p impressions, log1p clicks, CTR of the train days),
              category int32 [M] (only with config.use_category)

Fusion (`config.fusion`), for both towers unless stated:
  id_only      FC(ID)
  mm_only      FC(stage-1 vector)                      (the "reduced MM vector")
  add          FC(ID) + FC(MM)                         (the source's best stage-2 variant)
  concat       [FC(ID), FC(MM)]
  gate_add     item: g * FC(ID) + (1 - g) * content;  query: FC(ID) + FC(MM)
  gate_concat  item: [FC(ID), g * content];           query: [q, q], so <q', item> = <q, id>
               + g <q, content> (the Guangguang form, where the inner product adds the views)
The content tower is FC(MM) (+ a category embedding with use_category): no ID features. The gate
g = sigmoid(MLP(stats)) [M, 1]. Outputs are L2-normalised (the scores are cosines / tau).

`__call__` returns a dict of named per-example tensors (ARCHITECTURE.md "Recall contracts").
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmret.ops import l2_normalize

FUSIONS = ('id_only', 'mm_only', 'add', 'concat', 'gate_add', 'gate_concat')


def uses_ids(fusion: str) -> bool:
  return fusion != 'mm_only'


def uses_mm(fusion: str) -> bool:
  return fusion != 'id_only'


def is_gated(fusion: str) -> bool:
  return fusion.startswith('gate_')


class Gate(nn.Module):
  """Posterior statistics [M, 3] -> g in (0, 1) [M, 1]: how much the item relies on its ID."""
  hidden: int = 16

  @nn.compact
  def __call__(self, stats: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden, name='hidden')(stats))
    return jax.nn.sigmoid(nn.Dense(1, name='out')(h))


class RecallModel(nn.Module):
  """Query and item towers of the recall model. config: fusion, dim, gate_hidden, use_category;
  num_categories: categories in the data (1 + this rows of the category embedding)."""
  config: ml_collections.ConfigDict
  num_categories: int = 0

  def setup(self):
    c = self.config
    if c.fusion not in FUSIONS:
      raise ValueError(f'config.model.fusion={c.fusion!r}: choose from {FUSIONS}.')
    if uses_ids(c.fusion):
      self.query_id_fc = nn.Dense(c.dim, name='query_id_fc')
      self.item_id_fc = nn.Dense(c.dim, name='item_id_fc')
    if uses_mm(c.fusion):
      self.query_mm_fc = nn.Dense(c.dim, name='query_mm_fc')   # FC dimension reduction E -> d
      self.item_mm_fc = nn.Dense(c.dim, name='item_mm_fc')
      if c.use_category:
        self.category_embed = nn.Embed(self.num_categories + 1, c.dim, name='category_embed')
    if is_gated(c.fusion):
      self.gate = Gate(c.gate_hidden, name='gate')

  def encode_query(self, q_id: jax.Array, q_mm: jax.Array) -> dict[str, jax.Array]:
    """-> {'query_vec' [B, D], 'query_base' [B, d]} (base: before gate_concat's duplication)."""
    fusion = self.config.fusion
    parts = []
    if uses_ids(fusion):
      parts.append(self.query_id_fc(q_id))
    if uses_mm(fusion):
      parts.append(self.query_mm_fc(q_mm))
    if fusion == 'concat':
      base = jnp.concatenate(parts, axis=-1)
    else:
      base = sum(parts)
    vec = jnp.concatenate([base, base], axis=-1) if fusion == 'gate_concat' else base
    return {'query_vec': l2_normalize(vec), 'query_base': l2_normalize(base)}

  def encode_item(self, i_id: jax.Array, i_mm: jax.Array, stats: jax.Array,
                  category: jax.Array | None = None) -> dict[str, jax.Array]:
    """-> {'item_vec' [M, D]} plus, for gated fusion, 'id_view', 'content_view' [M, d] and
    'gate' [M, 1]."""
    c = self.config
    out = {}
    id_view = self.item_id_fc(i_id) if uses_ids(c.fusion) else None
    content = None
    if uses_mm(c.fusion):
      content = self.item_mm_fc(i_mm)
      if c.use_category:
        content = content + self.category_embed(category)
    if c.fusion == 'id_only':
      vec = id_view
    elif c.fusion == 'mm_only':
      vec = content
    elif c.fusion == 'add':
      vec = id_view + content
    elif c.fusion == 'concat':
      vec = jnp.concatenate([id_view, content], axis=-1)
    else:
      g = self.gate(stats)
      if c.fusion == 'gate_add':
        vec = g * id_view + (1.0 - g) * content
      else:
        vec = jnp.concatenate([id_view, g * content], axis=-1)
      out.update(id_view=id_view, content_view=content, gate=g)
    out['item_vec'] = l2_normalize(vec)
    return out

  def __call__(self, q_id, q_mm, i_id, i_mm, stats, category=None) -> dict[str, jax.Array]:
    return {**self.encode_query(q_id, q_mm), **self.encode_item(i_id, i_mm, stats, category)}
