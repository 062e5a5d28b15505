"""Model selection on a validation split: evaluate every N steps, keep the best parameters.

Fine-tuning a pretrained encoder on little labelled data can overfit within a few hundred steps
and end below the encoder it started from (issue 14); the last step is then the wrong model to
report. The selector scores the initial parameters and every `every`-th step (and the last) on
the validation split, keeps a copy of the best parameters, and at the last step puts them back
into the state, so that the final checkpoint, the evaluation and the export all use them. The
initialisation is a candidate like any step: when no trained step beats it on validation, the
run ends with its initial parameters (best step 0) and says so, never below its starting point.

    selector = Selector(validate, metric='recall@100', every=50, num_steps=200)
    selector.start(state.params)                    # the initialisation's score
    trained = runner.train(..., after_step=selector)   # (step, state) -> state
    selector.summary()                              # one line; says so if training never helped

`validate(params) -> {metric: value}` is the job's (its towers on the validation queries).
Higher is better. With a `directory` (the job's `<workdir>/selection`) the selection survives a
resumed run: every validation writes `selection.json` (history, best step and score) and a new
best writes its parameters (an Orbax checkpoint of that step); the first step a resumed run
takes reads them back, keeping the validations of the steps up to the one it resumed from.
"""

from collections.abc import Callable
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mmret import files
from mmret.train.progress import info


class Selector:
  """See the module docstring; `history` holds (step, score) of every validation, step 0 =
  the initialisation."""

  def __init__(self, validate: Callable[[Any], dict[str, float]], *, metric: str, every: int,
               num_steps: int, directory: str | pathlib.Path | None = None):
    if every <= 0:
      raise ValueError(f'Selector needs every > 0 steps, got {every}.')
    self.validate, self.metric, self.every, self.num_steps = validate, metric, every, num_steps
    self.store = Store(directory) if directory is not None else None
    self._resume_pending = self.store is not None
    self.history: list[tuple[int, float]] = []
    self.best_step: int | None = None
    self.best_score = -math.inf
    self.best_params = None
    self.initial_score = math.nan

  def _score(self, params) -> float:
    results = self.validate(params)
    if self.metric not in results:
      raise KeyError(f'validation metric {self.metric!r} is not computed; known: '
                     f'{", ".join(sorted(results))}.')
    return float(results[self.metric])

  def start(self, params) -> float:
    """Scores the initial parameters (step 0), the first candidate; returns the score."""
    self.initial_score = self._score(params)
    self.history.append((0, self.initial_score))
    self._consider(0, self.initial_score, params)
    info(f'validation {self.metric} at initialisation: {self.initial_score:.4f}')
    return self.initial_score

  def _consider(self, step: int, score: float, params) -> None:
    # NaN (nothing to score) never becomes the best; ties keep the earlier step (the
    # initialisation first: training must beat it, not match it).
    if score > self.best_score:
      self.best_step, self.best_score = step, score
      # A copy: the next train step donates the state's buffers.
      self.best_params = jax.tree.map(jnp.copy, params)

  def __call__(self, step: int, state: Any) -> Any:
    """The loop's after_step hook: validates on schedule; at the last step returns the state
    with the best parameters."""
    if self._resume_pending:
      self._resume_pending = False
      if step > 1:  # the run resumed after step - 1
        self._resume(step - 1, state.params)
      else:  # a fresh run: whatever is there belongs to an earlier one
        self.store.clear()
    if step % self.every and step != self.num_steps:
      return state
    score = self._score(state.params)
    self.history.append((step, score))
    previous = self.best_step
    self._consider(step, score, state.params)
    if self.store is not None:
      self.store.save(self._meta(), self.best_params if self.best_step != previous else None,
                      self.best_step)
    info(f'step {step}: validation {self.metric} {score:.4f} (best {self.best_score:.4f} at '
         f'step {self.best_step})')
    if step == self.num_steps and self.best_params is not None:
      state = state.replace(params=self.best_params)
    return state

  def _meta(self) -> dict[str, Any]:
    return {'metric': self.metric, 'history': self.history, 'best_step': self.best_step,
            'best_score': self.best_score}

  def _resume(self, last_step: int, params) -> None:
    """Takes back the saved validations of steps 1..last_step and the saved best (a step the
    resumed run may run again: deterministic, so the same parameters)."""
    meta = self.store.load()
    if meta is None or meta['metric'] != self.metric:
      info('model selection: nothing saved for this metric; validating from this step on')
      return
    self.history += [(int(s), float(v)) for s, v in meta['history'] if 0 < s <= last_step]
    best_step, best_score = meta['best_step'], float(meta['best_score'])
    if best_step and best_score > self.best_score:
      self.best_params = self.store.restore_params(best_step, params)
      self.best_step, self.best_score = best_step, best_score
    info(f'model selection resumed: best step {self.best_step} ({self.metric} '
         f'{self.best_score:.4f}), {len(self.history)} validations')

  def summary(self) -> str:
    """One line: the chosen step and, if so, that training never beat the initialisation."""
    if self.best_step is None:
      return f'model selection: no step validated (validation {self.metric} undefined)'
    line = (f'model selection: step {self.best_step} of {self.num_steps}, validation '
            f'{self.metric} {self.best_score:.4f} (initialisation {self.initial_score:.4f})')
    if self.best_step == 0 and len(self.history) > 1:
      best_trained = max(score for _, score in self.history[1:])
      line += (f'; WARNING: no trained step beat the untrained initialisation (best trained '
               f'{best_trained:.4f}): the run keeps its initial parameters')
    return line

  def results(self) -> dict[str, float]:
    """Flat keys for results.json: select/best_step, select/best_score, select/initial_score
    and select/lift (best minus initialisation: the validation margin over the untrained model,
    0 when the initialisation was kept)."""
    best = self.best_score if self.best_step is not None else math.nan
    return {'select/best_step': float(self.best_step or 0),
            'select/best_score': best,
            'select/initial_score': self.initial_score,
            'select/lift': best - self.initial_score}


class Store:
  """`selection.json` and the best parameters (Orbax, the latest two bests) in `directory`."""

  META = 'selection.json'

  def __init__(self, directory: str | pathlib.Path):
    self.directory = pathlib.Path(directory).absolute()
    self._params = ocp.CheckpointManager(
        self.directory / 'best_params',
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                             enable_async_checkpointing=False))

  def save(self, meta: dict[str, Any], best_params, best_step: int | None) -> None:
    """Writes the best parameters first (when given), then the metadata that points to them,
    each atomically: a crash in between leaves the previous, consistent pair."""
    if best_params is not None and best_step:  # step 0: the initialisation, rebuilt on resume
      if best_step in self._params.all_steps():  # a step run again after a resume
        self._params.delete(best_step)
      self._params.save(best_step, args=ocp.args.StandardSave(best_params), force=True)
      self._params.wait_until_finished()
    if jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
      files.write_text_atomic(self.directory / self.META, json.dumps(meta))

  def clear(self) -> None:
    for step in self._params.all_steps():
      self._params.delete(step)
    if jax.process_index() == 0:
      (self.directory / self.META).unlink(missing_ok=True)

  def load(self) -> dict[str, Any] | None:
    path = self.directory / self.META
    return json.loads(path.read_text()) if path.is_file() else None

  def restore_params(self, step: int, like):
    """The saved best parameters of `step`, in the structure and shardings of `like`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._params.restore(step, args=ocp.args.StandardRestore(target))
