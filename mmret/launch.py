r"""The mmret command line: `python -m mmret.launch [--config FILE[:ARG]] [--workdir DIR] [--config.KEY=VALUE ...]`.

With no arguments it runs the default job (`configs/pretrain.py:default`) on SynthShop on the
CPU. Every run writes `<workdir>/results.json` (a flat JSON object of final metrics) and prints a
summary table. All logic lives in importable modules (`mmret.jobs.run`), so a notebook can do
the same with `run(load_config('configs/pretrain.py:tiny'), '/tmp/w')`.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mmret.config import DEFAULT_CONFIG

_CONFIG = config_flags.DEFINE_config_file(
    'config', str(DEFAULT_CONFIG), 'Config file, optionally with :ARG (a variant).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, logs and results.json '
                               '(default: ./workdir/<job>_<variant>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mmret import jobs  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('workdir', f'{config.job}_{config.get("variant", "x")}')
  results = jobs.run(config, workdir)
  print(jobs.format_results(results, title=f'{config.job} results ({workdir}/results.json)'))


def run_cli():
  try:
    app.run(main)
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == '__main__':
  run_cli()
