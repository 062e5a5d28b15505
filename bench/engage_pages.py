"""The engage job's page grouping (page_examples, labelled_impressions) on a BYOD directory,
against the object loop it replaced (tests/test_engage_pages.py:reference_pages): times in two
rounds, outputs compared, peak RSS (the reference included).

  python bench/engage_pages.py /tmp/synthshop_medium   # SynthShop medium (docs/PERFORMANCE.md)
"""

import pathlib
import resource
import sys
import time

from mmret.data import records
from mmret.jobs.engage import data as engage_data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tests'))
from test_engage_pages import reference_pages, rows_of  # noqa: E402


def _timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def main(root: str) -> None:
  dataset, seconds = _timed(lambda: records.load_dataset(root, check_images=False))
  print(f'load {seconds:.1f} s, {len(dataset.interactions):,} interactions')
  _, seconds = _timed(dataset.columns)
  print(f'columns {seconds:.2f} s')
  for round_ in range(2):
    examples, pages = _timed(engage_data.page_examples, dataset, 'train', 32)
    _, impressions = _timed(engage_data.labelled_impressions, dataset, 'eval')
    reference, ref_seconds = _timed(reference_pages, dataset, 'train', 32)
    print(f'round {round_}: page_examples {pages:.2f} s, labelled_impressions '
          f'{impressions:.2f} s, object reference {ref_seconds:.2f} s, {len(examples):,} rows')
  assert rows_of(examples) == reference, 'page_examples differs from the object reference'
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'equal to the reference; peak RSS {rss:.0f} MiB')


if __name__ == '__main__':
  main(sys.argv[1])
