"""Metrics to stdout and TensorBoard event files, plus the NaN/Inf guard at log steps.

Metrics stay on device between log steps; `log` is the only host<->device sync in the loop.
"""

import math
import pathlib
import time

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
  """A training metric became NaN or Inf."""


def check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
  if bad:
    raise NonFiniteError(f'step {step}: non-finite metric(s) {", ".join(bad)} = '
                         f'{[metrics[k] for k in bad]}; the last checkpoint before it is kept.')


def format_seconds(seconds: float) -> str:
  """4.2 -> '4s', 76 -> '1m16s', 3725 -> '1h02m'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


class MetricsLogger:
  """Writes scalars to stdout and `<workdir>/tensorboard` (tensorboardX; no TensorFlow)."""

  def __init__(self, workdir: str | pathlib.Path | None, *, enabled: bool = True, prefix: str = '',
               total_steps: int | None = None, batch_size: int | None = None):
    """total_steps / batch_size (optional): print `[step N/total]`, examples/s and the ETA."""
    self.enabled = enabled and jax.process_index() == 0
    self.prefix = prefix
    self.total_steps, self.batch_size = total_steps, batch_size
    self._writer = None
    if self.enabled and workdir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))
    self._t0 = time.perf_counter()
    self._last_step = None

  def log(self, step: int, metrics, *, check: bool = True, print_keys=None) -> dict[str, float]:
    """Fetches `metrics` to host, checks them, writes them; returns the host floats."""
    host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    if check:
      check_finite(step, host)
    now = time.perf_counter()
    if self._last_step is not None and step > self._last_step:
      host['perf/steps_per_sec'] = (step - self._last_step) / max(now - self._t0, 1e-9)
    self._t0, self._last_step = now, step
    if self.enabled:
      keys = print_keys or sorted(host)
      line = ' '.join(f'{k}={host[k]:.4g}' for k in keys if k in host)
      print(f'{self.prefix}[step {step}{self._of_total()}] {line}{self._rates(step, host)}',
            flush=True)
      if self._writer is not None:
        for k, v in host.items():
          self._writer.add_scalar(k, v, step)
        self._writer.flush()
    return host

  def reset_clock(self, step: int) -> None:
    """Rates from here on are measured from `step` (e.g. after the compiling first step)."""
    self._t0, self._last_step = time.perf_counter(), step

  def _of_total(self) -> str:
    return f'/{self.total_steps}' if self.total_steps else ''

  def _rates(self, step: int, host: dict[str, float]) -> str:
    """' | 2.10 steps/s, 67.2 ex/s, ETA 1m16s' once a rate is known, else ''."""
    rate = host.get('perf/steps_per_sec')
    if not rate:
      return ''
    parts = [f'{rate:.3g} steps/s']
    if self.batch_size:
      parts.append(f'{rate * self.batch_size:.3g} ex/s')
    if self.total_steps and step < self.total_steps:
      parts.append(f'ETA {format_seconds((self.total_steps - step) / rate)}')
    return ' | ' + ', '.join(parts)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer is not None:
      for k, v in scalars.items():
        self._writer.add_scalar(k, v, step)
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
