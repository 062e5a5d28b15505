r"""The mmret command line: `python -m mmret.launch [--config FILE[:ARG]] [--workdir DIR] [--config.KEY=VALUE ...]`.

With no arguments it runs the default job (`configs/pretrain.py:default`) on SynthShop on the
CPU. Every run writes `<workdir>/results.json` (a flat JSON object of final metrics) and prints a
summary table. All logic lives in importable modules (`mmret.jobs.run`), so a notebook can do
the same with `run(load_config('configs/pretrain.py:tiny'), '/tmp/w')`.
"""

import errno
import os
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mmret.config import DEFAULT_CONFIG

# OSErrors that are the machine's state, not a bug: a full disk or quota, a read-only file
# system, missing permissions (e.g. on data.cache_dir).
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _define_config_flag():
  """--config. Without --config on the command line, ml_collections parses the default config
  file, with the --config.KEY overrides of sys.argv, as soon as the flag is defined, so an
  unknown key would raise here (a traceback at import); it is then defined without the
  overrides and `_precheck` names the key in one line before absl parses anything."""
  kwargs = dict(name='config', default=str(DEFAULT_CONFIG),
                help_string='Config file, optionally with :ARG (a variant).', lock_config=True)
  try:
    return config_flags.DEFINE_config_file(**kwargs)
  except (AttributeError, KeyError):
    return config_flags.DEFINE_config_file(**kwargs, sys_argv=sys.argv[:1])


_CONFIG = _define_config_flag()
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, logs and results.json '
                               '(default: ./workdir/<job>_<variant>).')
# Multi-process runs (docs/LAUNCH.md). Without these flags, SLURM / Open MPI / TPU pod
# environments are detected; a single process needs nothing.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False,
                                  'Print the resolved config (file + overrides) and exit.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False,
    'Resume a workdir whose run had another config (by default only train.num_steps, '
    'logging, checkpointing and eval keys may change; the others are listed and refused).')


def run_and_report(config, workdir: str, allow_config_change: bool = False) -> int:
  """Runs the job and prints its results; returns the exit code. The user's mistakes end in
  one line on stderr: 2 for the config, the data, the workdir or its disk (naming the key,
  record or directory), 3 for a diverged run. Anything else is a bug: a traceback, exit 1."""
  # pylint: disable=g-import-not-at-top  (imported here to keep --help fast)
  from mmret import jobs
  from mmret.config import ConfigError
  from mmret.data.records import DataError
  from mmret.train.checkpoint import CheckpointWriteError
  from mmret.train.metrics_log import NonFiniteError
  try:
    results = jobs.run(config, workdir, allow_config_change=allow_config_change)
  except (ConfigError, DataError, CheckpointWriteError) as e:
    print(f'mmret: error: {e}', file=sys.stderr)
    return 2
  except NonFiniteError as e:
    print(f'mmret: training diverged: {e}', file=sys.stderr)
    return 3
  except OSError as e:
    if e.errno not in _ENVIRONMENT_ERRNOS:
      raise
    print(f'mmret: error: cannot write {e.filename or "a file"}: {e.strerror}; free space or '
          'fix the permissions there, or point --workdir / data.cache_dir elsewhere.',
          file=sys.stderr)
    return 2
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(jobs.format_results(results, title=f'{config.job} results ({workdir}/results.json)'))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # The libraries underneath (Orbax, TFDS) log every file at INFO; `--verbosity=0` shows them.
    logging.set_verbosity(logging.WARNING)
  if _PRINT_CONFIG.value:
    print(_CONFIG.value)
    return
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('workdir', f'{config.job}_{config.get("variant", "x")}')
  # pylint: disable=g-import-not-at-top  (neither loads JAX)
  from mmret.config import ConfigError
  from mmret.jobs import workdir as workdir_lib
  from mmret.train import distributed
  explicit = _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not explicit and distributed.cluster_size(os.environ) == 1:
    # One process: a workdir another job holds is refused before JAX loads. (In a multi-process
    # job only process 0 locks, and which one this is is known only once JAX starts.)
    try:
      workdir_lib.refuse_if_busy(pathlib.Path(workdir))
    except ConfigError as e:
      print(f'mmret: error: {e}', file=sys.stderr)
      sys.exit(2)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  code = run_and_report(config, workdir, _ALLOW_CONFIG_CHANGE.value)
  if code:
    sys.exit(code)


def _config_spec(argv) -> str:
  """The value of --config in argv (either form), else the default config."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return str(DEFAULT_CONFIG)


def _precheck(argv) -> None:
  """The config file, its variant and every --config.KEY, checked before absl loads them, so
  that each mistake is one line naming it (absl would print nested tracebacks)."""
  # pylint: disable=g-import-not-at-top  (kept out of --help's import time)
  from mmret.config import ConfigError, load_config
  from mmret.config.loading import unknown_key_error
  try:
    config = load_config(_config_spec(argv))
    for arg in argv[1:]:
      if not arg.startswith('--config.'):
        continue
      key = arg[len('--config.'):].split('=', 1)[0]
      node = config
      for part in key.split('.'):
        if not hasattr(node, 'keys') or part not in node:
          raise unknown_key_error(config, key)
        node = node[part]
  except ConfigError as e:
    print(f'mmret: error: {e}', file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with an unknown `--config.KEY` reported by name instead of a traceback."""
  if not any(a in ('--help', '-h', '--helpfull') for a in argv[1:]):
    _precheck(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    text = str(e)
    given = [a.split('=')[0] for a in argv[1:]
             if a.startswith('--config.') and a.split('=')[0].rsplit('.', 1)[-1] in text]
    key = given[0][len('--'):] if given else text
    hint = re.search(r'Did you mean "[^"]+"', text)
    print(f'mmret: error: unknown config key {key}.' + (f' {hint.group(0)}?' if hint else ''),
          file=sys.stderr)
    sys.exit(2)


def run_cli():
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    # Ctrl-C in training is caught by the loop (checkpoint, then a message); here it came
    # during data preparation or evaluation, where there is nothing to save.
    print('mmret: interrupted; checkpoints written so far are kept, and the same command '
          'resumes from the last one.', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  run_cli()
