r"""Times what an evaluation does besides the model and the search, at catalog scale.

  --source DIR        a BYOD directory (docs/DATA.md): load it, build the eval set
                      (targets, image-only ground truth over the whole catalog) and the ideal
                      nDCG gains at --k over the whole catalog
  --builder_dir DIR   a prepared TFDS dataset (the job's ~/.cache/mmret/tfds/mmret_byod/...):
                      the catalog pass (pipelines.item_batches) alone, items/s

Writes JSON (--out) and prints it:
  load_seconds, build_eval_set_seconds, ideal_gains_seconds, items, interactions, eval_queries,
  image_only_relevant_pairs, ideal_gains_sum (a checksum to compare two versions of the code),
  catalog_items_per_sec, catalog_batches, host_cores, device, date, command.

  python bench/eval_inputs.py --source ~/.cache/mmret/synthshop-large-<hash> --out eval.json
  python bench/eval_inputs.py --builder_dir ~/.cache/mmret/tfds/mmret_byod/<hash>/1.1.0 \
      --batches 12 --out catalog.json
"""

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top
from mmret import files
from mmret.data import evalset
from mmret.data import pipelines
from mmret.data import records
from mmret.data import tokenizer as tokenizer_lib


def eval_set_times(source: str, k: int) -> dict:
  tic = time.perf_counter()
  dataset = records.load_dataset(source)
  load = time.perf_counter() - tic
  tic = time.perf_counter()
  es = evalset.build_eval_set(dataset)
  build = time.perf_counter() - tic
  tic = time.perf_counter()
  ideal = es.ideal_gains(k)
  ideal_seconds = time.perf_counter() - tic
  return {'load_seconds': load, 'build_eval_set_seconds': build,
          'ideal_gains_seconds': ideal_seconds, 'k': k, 'items': len(dataset.items),
          'interactions': len(dataset.interactions), 'eval_queries': len(es.queries),
          'image_only_relevant_pairs': int(sum(len(x) for x in es.image_only_relevant)),
          'ideal_gains_sum': float(ideal.sum())}


def catalog_rate(builder_dir: str, batch_size: int, batches: int, tokenizer: str,
                 cache_dir: str) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(builder_dir)
  tok = tokenizer_lib.build_tokenizer(tokenizer, [], 30522, os.path.expanduser(cache_dir))
  it = iter(pipelines.item_batches(builder, tok, batch_size, 24))
  next(it)  # opening the files and starting the threads is not the rate
  tic = time.perf_counter()
  count = sum(1 for _ in itertools.islice(it, batches))
  seconds = time.perf_counter() - tic
  return {'catalog_items_per_sec': count * batch_size / seconds, 'catalog_batches': count,
          'batch_size': batch_size}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--source')
  parser.add_argument('--builder_dir')
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--batch_size', type=int, default=1024)
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--tokenizer', default='minilm')
  parser.add_argument('--cache_dir', default='~/.cache/mmret')
  parser.add_argument('--out')
  args = parser.parse_args(argv)
  if not (args.source or args.builder_dir):
    parser.error('give --source and/or --builder_dir')
  out = {'host_cores': os.cpu_count(), 'device': f'{platform.machine()} CPU',
         'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
         'command': 'python bench/eval_inputs.py ' + ' '.join(sys.argv[1:] if argv is None
                                                               else argv)}
  if args.source:
    out.update(eval_set_times(os.path.expanduser(args.source), args.k))
  if args.builder_dir:
    out.update(catalog_rate(os.path.expanduser(args.builder_dir), args.batch_size, args.batches,
                            args.tokenizer, args.cache_dir))
  text = json.dumps(out, indent=2)
  print(text)
  if args.out:
    files.write_text_atomic(pathlib.Path(args.out), text + '\n')
  return out


if __name__ == '__main__':
  main()
