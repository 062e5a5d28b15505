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
Higher is better. The selection is not checkpointed: a run resumed mid-way keeps the best of the
steps it ran itself.
"""

from collections.abc import Callable
import math
from typing import Any

import jax
import jax.numpy as jnp

from mmret.train.progress import info


class Selector:
  """See the module docstring; `history` holds (step, score) of every validation, step 0 =
  the initialisation."""

  def __init__(self, validate: Callable[[Any], dict[str, float]], *, metric: str, every: int,
               num_steps: int):
    if every <= 0:
      raise ValueError(f'Selector needs every > 0 steps, got {every}.')
    self.validate, self.metric, self.every, self.num_steps = validate, metric, every, num_steps
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
    if step % self.every and step != self.num_steps:
      return state
    score = self._score(state.params)
    self.history.append((step, score))
    self._consider(step, score, state.params)
    info(f'step {step}: validation {self.metric} {score:.4f} (best {self.best_score:.4f} at '
         f'step {self.best_step})')
    if step == self.num_steps and self.best_params is not None:
      state = state.replace(params=self.best_params)
    return state

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
    """Flat keys for results.json: select/best_step, select/best_score, select/initial_score."""
    return {'select/best_step': float(self.best_step or 0),
            'select/best_score': self.best_score if self.best_step is not None else math.nan,
            'select/initial_score': self.initial_score}
