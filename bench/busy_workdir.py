r"""Times how long `python -m mmret.launch` takes to refuse a workdir another job holds.

The refusal is made before JAX and the job modules load (mmret/launch.py, `refuse_if_busy`),
so it costs the interpreter, absl and the config file. This script holds the lock itself (as a
running job does), runs the CLI `--runs` times against the workdir and prints the wall times
(JSON: seconds per run, min, median, max; each run must exit 2 with the lock message).

  python bench/busy_workdir.py --runs 5
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmret.jobs import workdir as workdir_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--config', default='configs/pretrain.py:tiny')
  args = parser.parse_args()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  seconds = []
  with tempfile.TemporaryDirectory() as tmp, workdir_lib.lock(pathlib.Path(tmp)):
    for _ in range(args.runs):
      tic = time.perf_counter()
      proc = subprocess.run([sys.executable, '-m', 'mmret.launch', '--config', args.config,
                             '--workdir', tmp], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
      seconds.append(time.perf_counter() - tic)
      if proc.returncode != 2 or 'is in use by pid' not in proc.stderr:
        raise SystemExit(f'unexpected: exit {proc.returncode}: {proc.stderr[-2000:]}')
  print(json.dumps({'seconds': [round(s, 3) for s in seconds], 'min': round(min(seconds), 3),
                    'median': round(statistics.median(seconds), 3),
                    'max': round(max(seconds), 3)}))


if __name__ == '__main__':
  main()
