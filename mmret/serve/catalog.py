"""The catalog a served model was evaluated on, shared by every kind of served model."""

from typing import Any

import numpy as np


class Catalog:
  """Mixin: `self.files` (mmret.train.model_dir files) -> the catalog's items and vectors."""

  files: Any

  @property
  def items(self) -> list[dict[str, Any]]:
    """[N] {item_id, title, image} in item-index order."""
    return self.files.items

  @property
  def item_ids(self) -> list[str]:
    return [it['item_id'] for it in self.files.items]

  @property
  def item_vectors(self) -> np.ndarray:
    """float32 [N, D]: the vectors the job's evaluation searched (fused ones for recall)."""
    return self.files.item_vectors
