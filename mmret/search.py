"""`python -m mmret.search OUTDIR "red floral dress" --k 10` (or `--queries FILE --json`):
top-K items of queries from a serving directory written by `python -m mmret.export`. The logic
is mmret.serve.Searcher; this is the command line (mmret/serve/cli.py)."""

from mmret.serve import cli

if __name__ == '__main__':
  cli.search_main()
