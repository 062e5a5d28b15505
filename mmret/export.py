"""`python -m mmret.export WORKDIR OUTDIR`: a finished run's workdir -> a serving directory
(model, tokenizer, item ids and vectors, saved ScaNN index, portable query tower). The logic is
mmret.serve.export; this is the command line (mmret/serve/cli.py)."""

from mmret.serve import cli

if __name__ == '__main__':
  cli.export_main()
