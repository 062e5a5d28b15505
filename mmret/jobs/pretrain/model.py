"""The stage-1 model of a config and its prepared data: built, initialised, restored.

Values that come from the data (the tokenizer's vocabulary size and [MASK] id, the MPM
codebook fitted on catalog images) are passed to the model here; the config is never edited.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from mmret.data import prepare as prepare_lib
from mmret.data import validation
from mmret.encoders import bert_import
from mmret.towers import masking
from mmret.towers.pretrain import PretrainModel
from mmret.towers.pretrain import TASKS
from mmret.towers.pretrain import set_codebook
from mmret.train import runner as runner_lib
from mmret.train import state as state_lib
from mmret.train.progress import info

RNG_STREAMS = ('dropout', 'masking')


def build_model(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData
                ) -> PretrainModel:
  """The model, computing only the tasks the loss weighs (`active_tasks`)."""
  return PretrainModel(config.model, vocab_size=data.tokenizer.vocab_size,
                       mask_token_id=data.tokenizer.mask_id,
                       tasks=active_tasks(config.loss.weights, switched_off(config, data)))


def active_tasks(weights, off: tuple[str, ...] = ()) -> tuple[str, ...]:
  """The tasks a train step computes: weight > 0 and not switched off; QIC always (its vectors
  are the retrieval vectors and pick QIM's hard negatives). A task with weight 0 costs nothing:
  no masking of its inputs, no pass, no head (e.g. the two-tower mode, QIC only)."""
  return tuple(name for name in TASKS
               if name == 'qic' or (weights[name] > 0 and name not in off))


@dataclasses.dataclass
class Initialiser:
  """init_variables(rng) for Runner.create_state: model.init on a sample batch, with the MPM
  codebook (fitted once, on catalog images) set when `codebook` is given."""
  model: PretrainModel
  sample: dict[str, Any]
  codebook: Any = None

  def __call__(self, rng: jax.Array):
    variables = self.model.init({name: rng for name in ('params', *RNG_STREAMS)}, self.sample,
                                train=False)
    return variables if self.codebook is None else set_codebook(variables, self.codebook)


# Tasks that learn from item images; on a catalog without any they are switched off.
IMAGE_TASKS = ('mpm', 'qim2')


def has_images(data: prepare_lib.PreparedData) -> bool:
  return any(item.image is not None for item in data.dataset.items)


def effective_loss(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData
                   ) -> ml_collections.ConfigDict:
  """config.loss, with the image tasks' weights set to 0 when no item has an image (MPM has no
  patch to predict; QIM2 would compare [CLS]-only items: a constant loss). A copy: the config
  itself is never edited. Says so in one line."""
  loss = ml_collections.ConfigDict(config.loss.to_dict())
  off = switched_off(config, data)
  for name in off:
    loss.weights[name] = 0.0
  if off:
    info(f'no item has an image: {", ".join(off)} switched off (nothing for them to learn)')
  return loss


def switched_off(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData
                 ) -> tuple[str, ...]:
  """The weighted image tasks, when no item has an image; else ()."""
  if has_images(data):
    return ()
  return tuple(name for name in IMAGE_TASKS if config.loss.weights[name] > 0)


def fit_codebook(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData):
  """The MPM codebook fitted on catalog images; None without images (MPM is off then)."""
  if not has_images(data):
    return None
  return masking.fit_mpm_codebook(data.sample_images(seed=config.seed), config.model.patch_size,
                                  config.model.mpm_classes, seed=config.seed,
                                  grid=config.model.mpm_grid)


def validation_split(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData
                     ) -> list[str]:
  """The training queries held out for model selection (config.select; [] when it is off or
  the hash picks none, with one line saying so)."""
  select = config.get('select')
  if not select or not select.every:
    return []
  held_out = validation.validation_queries(data.dataset, select.share,
                                           min_queries=select.get('min_queries', 0))
  if not held_out:
    info(f'model selection off: select.share={select.share} holds out no training query')
  return held_out


def pretrained_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Top-level parameters holding imported weights: the optimizer gives them
  config.optim.pretrained_lr (the fine-tuning recipe); none with a random init."""
  return ('encoder',) if config.model.text_init == 'minilm' else ()


def init_text_encoder(config: ml_collections.ConfigDict, state: state_lib.TrainState, tx,
                      shardings) -> state_lib.TrainState:
  """Imports the pretrained text encoder into `state` when config.model.text_init asks."""
  if config.model.text_init != 'minilm':
    return state
  params = bert_import.init_text_encoder_from_minilm({'params': state.params})['params']
  return state_lib.replace_params(state, tx, params, shardings)


def restore(config: ml_collections.ConfigDict, data: prepare_lib.PreparedData,
            directory: pathlib.Path, sample: dict[str, Any]
            ) -> tuple[PretrainModel, state_lib.TrainState]:
  """The model and the latest train state of a stage-1 run in `directory` (its checkpoint
  overwrites every value, so init is for shapes and shardings only)."""
  runner = runner_lib.Runner(config, directory)
  model = build_model(config, data)
  state, _ = runner.create_state(Initialiser(model, sample),
                                 runner.optimizer(pretrained_keys(config)))
  return model, runner.restore(state, None)
