"""The layout's rules, checked on the source: no import cycle (the registry's lazy importlib
imports included), the lower floors never import the jobs, no file over 400 lines, no function
over 80 lines outside configs (docs/ARCHITECTURE.md)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'mmret'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _resolve(name: str, modules) -> str | None:
  """The mmret module an import names (`from a.b import c` may name module a.b.c)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def import_graph() -> dict[str, set[str]]:
  """module -> the mmret modules it imports (at any depth in the file), plus the job modules
  the registry loads with importlib (`mmret.jobs.<job>.<part>` for every job and part)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f'{node.module}.{a.name}' for a in node.names]
      for target in targets:
        resolved = _resolve(target, modules)
        if resolved and resolved.startswith('mmret') and resolved != name:
          edges.add(resolved)
    graph[name] = edges
  from mmret import jobs  # pylint: disable=g-import-not-at-top
  for job in jobs.JOBS:
    for part in ('job', 'config'):
      graph['mmret.jobs'].add(f'mmret.jobs.{job}.{part}')
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_import_graph_has_no_cycle():
  graph = import_graph()
  assert 'mmret.jobs.recall.job' in graph['mmret.jobs']   # the importlib edges are in
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


@pytest.mark.parametrize('floor', ['mmret.train', 'mmret.evaluate', 'mmret.losses',
                                   'mmret.embeddings', 'mmret.encoders', 'mmret.towers',
                                   'mmret.data', 'mmret.ops', 'mmret.files'])
def test_lower_floors_never_import_the_jobs(floor):
  graph = import_graph()
  for module, edges in graph.items():
    if module == floor or module.startswith(floor + '.'):
      assert not {e for e in edges if e.startswith('mmret.jobs')}, module


def test_only_the_entry_points_import_serve():
  # mmret.serve sits between the jobs and the command lines: nothing below it imports it.
  graph = import_graph()
  for module, edges in graph.items():
    if module.startswith('mmret.serve') or module in ('mmret.export', 'mmret.search'):
      continue
    assert not {e for e in edges if e.startswith('mmret.serve')}, module


def test_jobs_never_import_each_other_or_the_registry():
  from mmret import jobs  # pylint: disable=g-import-not-at-top
  graph = import_graph()
  for module, edges in graph.items():
    parts = module.split('.')
    if len(parts) < 3 or parts[:2] != ['mmret', 'jobs'] or parts[2] not in jobs.JOBS:
      continue  # not inside a job package (the registry's own modules: sweep, results, ...)
    job = parts[2]
    for edge in edges:
      if edge.startswith('mmret.jobs'):
        other = edge.split('.')[2] if edge.count('.') >= 2 else None
        # Stage 2 is built on stage 1's model: the recall job may read the pretrain job's
        # model, data and towers (never its job module); nothing imports the registry.
        allowed = other == job or (job == 'recall' and other == 'pretrain'
                                   and not edge.endswith('.job'))
        assert allowed, f'{module} imports {edge}'


def test_file_and_function_sizes():
  too_long = []
  for path in list(PACKAGE.rglob('*.py')) + list((ROOT / 'bench').rglob('*.py')):
    text = path.read_text()
    if len(text.splitlines()) > 400:
      too_long.append(f'{path.relative_to(ROOT)}: {len(text.splitlines())} lines')
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 80:
          too_long.append(f'{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines')
  assert not too_long, too_long


def test_config_is_the_ground_floor():
  # Configs are read by everything; they must be loadable without the data, models or jobs.
  graph = import_graph()
  for module, edges in graph.items():
    if module.startswith('mmret.config'):
      assert all(e.startswith(('mmret.config', 'mmret.ops')) for e in edges), (module, edges)
