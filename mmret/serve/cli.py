"""The command lines of mmret.serve (thin; the logic is in serving.py):

  python -m mmret.export WORKDIR OUTDIR [--num_neighbors 100] [--variant FUSION]
  python -m mmret.search OUTDIR "red floral dress" [--k 10] [--json]
  python -m mmret.search OUTDIR --queries FILE [--k 10] [--json]   # one query per line

Text output: per query, a line with the query, then `rank  score  item_id  title` per hit.
--json: one JSON object per query and line, {"query", "hits": [{"rank", "item_id", "title",
"score", "image"}]}. As with `python -m mmret.launch`, bad input (a workdir or directory that is
incomplete, of another format version or without an index; an unreadable --queries file; a
usage mistake) is one line `mmret: error: ...` on stderr and exit code 2.
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


class _Parser(argparse.ArgumentParser):
  """argparse with usage mistakes reported in one line, like every other mmret error."""

  def error(self, message):
    _fail(f'{message} (see {self.prog} --help)')


def _fail(message: str):
  print(f'mmret: error: {message}', file=sys.stderr)
  sys.exit(2)


def _run(fn):
  # pylint: disable=g-import-not-at-top  (kept out of --help's import time)
  from mmret.config import ConfigError
  from mmret.data.records import DataError
  try:
    return fn()
  except (ConfigError, DataError) as e:
    _fail(str(e))
  except KeyboardInterrupt:
    sys.exit(130)


def export_main(argv: Sequence[str] | None = None) -> None:
  parser = _Parser(prog='python -m mmret.export', description=(
      'Write a serving directory (model, tokenizer, item ids and vectors, saved ScaNN index, '
      'portable query tower) from the workdir of a finished run.'))
  parser.add_argument('workdir', help='workdir of a finished run (or its model/ directory)')
  parser.add_argument('outdir', help='serving directory to write')
  parser.add_argument('--num_neighbors', type=int, default=100,
                      help='the K the ScaNN index is tuned for (default 100)')
  parser.add_argument('--variant', help='the fusion to export from a recall workdir with '
                      'several (e.g. gate_add)')
  args = parser.parse_args(argv)

  def run():
    from mmret import serve  # pylint: disable=g-import-not-at-top
    out = serve.export(args.workdir, args.outdir, num_neighbors=args.num_neighbors,
                       variant=args.variant)
    print(f'wrote {out} (search it: python -m mmret.search {out} "a query" --k 10)')
  _run(run)


def _read_queries(path: str) -> list[str]:
  from mmret.config import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    lines = pathlib.Path(path).read_text(encoding='utf-8').splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f'--queries {path}: unreadable ({e}).') from None
  queries = [line.strip() for line in lines if line.strip()]
  if not queries:
    raise ConfigError(f'--queries {path}: no query in it (one query per line).')
  return queries


def format_hits(query: str, hits, as_json: bool) -> str:
  """One query's hits as the CLI prints them (text block or one JSON line)."""
  if as_json:
    return json.dumps({'query': query, 'hits': [
        {'rank': r, 'item_id': h.item_id, 'title': h.title, 'score': round(h.score, 6),
         'image': h.image} for r, h in enumerate(hits, 1)]}, ensure_ascii=False)
  lines = [f'query: {query}']
  lines += [f'{r:>4}  {h.score:.4f}  {h.item_id}  {h.title}' for r, h in enumerate(hits, 1)]
  return '\n'.join(lines)


def search_main(argv: Sequence[str] | None = None) -> None:
  parser = _Parser(prog='python -m mmret.search', description=(
      'Top-K items of queries from a serving directory written by python -m mmret.export.'))
  parser.add_argument('outdir', help='serving directory (python -m mmret.export)')
  parser.add_argument('query', nargs='?', help='a query, e.g. "red floral dress"')
  parser.add_argument('--queries', help='file with one query per line')
  parser.add_argument('--k', type=int, default=10, help='hits per query (default 10)')
  parser.add_argument('--json', action='store_true', help='one JSON line per query')
  args = parser.parse_args(argv)
  if (args.query is None) == (args.queries is None):
    parser.error('give either a query or --queries FILE')
  if args.k < 1:
    parser.error(f'--k must be >= 1, got {args.k}')

  def run():
    from mmret import serve  # pylint: disable=g-import-not-at-top
    queries = [args.query] if args.query is not None else _read_queries(args.queries)
    # Encoding progress lines go to stderr: stdout is the hits only (one JSON line per query).
    with contextlib.redirect_stdout(sys.stderr):
      searcher = serve.Searcher.load(args.outdir)
      results = searcher.search(queries, k=args.k)
    for query, hits in zip(queries, results):
      print(format_hits(query, hits, args.json))
  _run(run)
