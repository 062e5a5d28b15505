"""Writes a SynthShop world to disk in the bring-your-own-data format (ARCHITECTURE.md, records).

  <out_dir>/items.jsonl         item_id, title, description, category, image (absent = no image),
                                context {price, rating, condition}, attributes, title_omits
  <out_dir>/images/<id>.png     RGB pictures, relative paths in items.jsonl
  <out_dir>/queries.jsonl       query, attributes
  <out_dir>/interactions.jsonl  one line per impression: query, item_id, page_id, position
                                (0 = top), click, purchase, engaged, relevance, day; in the
                                small-label regime (config judged.num_queries > 0) only
                                query, item_id, relevance, split (judged_pairs)
  <out_dir>/synthshop.json      the config used; written last, so it marks a complete dataset

Output is byte-identical for the same config: JSON with sorted keys, ensure_ascii=False and
rounded floats; PNGs from pillow, which stores no timestamp.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image

from mmret.data.synthshop import catalog as catalog_lib
from mmret.data.synthshop import config as config_lib
from mmret.data.synthshop import logs as logs_lib
from mmret.data.synthshop import render
from mmret.data.synthshop import text as text_lib
from mmret.data.synthshop import vocab

DATA_FILES = ('items.jsonl', 'queries.jsonl', 'interactions.jsonl')
CONFIG_FILE = 'synthshop.json'


@dataclasses.dataclass
class World:
  """A generated marketplace in memory: catalog columns, item text, queries, the log simulator."""
  config: object
  catalog: catalog_lib.Catalog
  text: text_lib.ItemText
  queries: text_lib.Queries
  simulator: logs_lib.MarketSimulator


def build(config) -> World:
  """Samples the whole world (but renders no pixels and writes nothing)."""
  config_lib.validate_config(config)
  cat = catalog_lib.sample_catalog(config)
  item_text = text_lib.item_text(config, cat)
  queries = text_lib.sample_queries(config, cat)
  simulator = logs_lib.MarketSimulator(config, cat, queries, item_text.titles)
  return World(config=config, catalog=cat, text=item_text, queries=queries, simulator=simulator)


def _dumps(obj) -> str:
  return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def is_complete(out_dir: pathlib.Path, config) -> bool:
  """True when out_dir holds every file of a dataset generated from this exact config."""
  marker = out_dir / CONFIG_FILE
  return (marker.is_file() and marker.read_text(encoding='utf-8') == config_lib.config_json(config)
          and all((out_dir / f).is_file() for f in DATA_FILES))


def _clear(out_dir: pathlib.Path) -> None:
  """Removes a previous SynthShop dataset; refuses to touch a directory that is not one."""
  if not out_dir.exists():
    out_dir.mkdir(parents=True)
    return
  if not out_dir.is_dir():
    raise ValueError(f'SynthShop output {out_dir} exists and is not a directory.')
  if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).exists():
    raise ValueError(f'SynthShop output {out_dir} is a non-empty directory without '
                     f'{CONFIG_FILE}; refusing to overwrite it.')
  (out_dir / CONFIG_FILE).unlink(missing_ok=True)  # first: a crash now leaves it incomplete
  for name in DATA_FILES:
    (out_dir / name).unlink(missing_ok=True)
  if (out_dir / 'images').exists():
    shutil.rmtree(out_dir / 'images')


def _write_images(world: World, out_dir: pathlib.Path) -> None:
  cfg, cat = world.config, world.catalog
  (out_dir / 'images').mkdir()
  place = render.sample_placements(cfg, len(cat))
  ids = cat.item_ids
  with_image = np.flatnonzero(cat.has_image)
  for start in range(0, len(with_image), cfg.images.chunk):
    chunk = with_image[start:start + cfg.images.chunk]
    pixels = render.render_items(cfg, cat, chunk, place)
    for i, img in zip(chunk, pixels):
      Image.fromarray(img, 'RGB').save(out_dir / 'images' / f'{ids[i]}.png', format='PNG')


def _write_items(world: World, path: pathlib.Path) -> None:
  cat, txt = world.catalog, world.text
  ids = cat.item_ids
  with open(path, 'w', encoding='utf-8') as f:
    for i, item_id in enumerate(ids):
      rating = None if np.isnan(cat.rating[i]) else round(float(cat.rating[i]), 1)
      record = {
          'item_id': item_id,
          'title': txt.titles[i],
          'description': txt.descriptions[i],
          'category': vocab.CATEGORY_NAMES[cat.category[i]],
          'context': {
              'price': round(float(cat.price[i]), 2),
              'rating': rating,
              'condition': round(float(vocab.CONDITION_VALUES[cat.condition[i]]), 2),
          },
          'attributes': cat.attributes(i),
          'title_omits': list(txt.omits[i]),
      }
      if cat.has_image[i]:
        record['image'] = f'images/{item_id}.png'
      f.write(_dumps(record) + '\n')


def _write_queries(world: World, path: pathlib.Path) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    for q, query in enumerate(world.queries.texts):
      f.write(_dumps({'query': query, 'attributes': world.queries.attributes(q)}) + '\n')


def _write_interactions(world: World, path: pathlib.Path) -> None:
  """One day at a time; lines are formatted directly (json.dumps per line is the bottleneck).

  The template spells out json.dumps(record, sort_keys=True) for these fixed keys.
  """
  lc = world.config.logs
  item_ids = [_dumps(i) for i in world.catalog.item_ids]
  query_json = [_dumps(q) for q in world.queries.texts]
  width = max(6, len(str(lc.num_days * lc.pages_per_day - 1)))
  flag = ('false', 'true')
  with open(path, 'w', encoding='utf-8') as f:
    for d in range(world.simulator.num_days):
      imp = world.simulator.day(d)
      lines = []
      for q, it, page, pos, click, buy, rel in zip(
          imp.query.tolist(), imp.item.tolist(), imp.page.tolist(), imp.position.tolist(),
          imp.click.tolist(), imp.purchase.tolist(), imp.relevance.tolist()):
        lines.append(
            f'{{"click": {flag[click]}, "day": {d}, "engaged": {flag[click or buy]}, '
            f'"item_id": {item_ids[it]}, "page_id": "p{page:0{width}d}", "position": {pos}, '
            f'"purchase": {flag[buy]}, "query": {query_json[q]}, "relevance": {rel}}}\n')
      f.writelines(lines)


def judged_pairs(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The small-label regime (config judged.*): query int [P], item int [P], grade int8 [P].

  The judged.num_queries queries with the most impressions (ties: lower index), each with the
  first judged.per_query distinct items in impression order (day, page, position): what a
  judge would be shown.
  """
  jc = world.config.judged
  imp = world.simulator.all_days()
  shown = np.bincount(imp.query, minlength=len(world.queries.texts))
  chosen = np.argsort(-shown, kind='stable')[:jc.num_queries]
  chosen = chosen[shown[chosen] > 0]
  out_q, out_i, out_g = [], [], []
  for q in sorted(chosen.tolist()):
    rows = np.flatnonzero(imp.query == q)
    _, first = np.unique(imp.item[rows], return_index=True)
    keep = rows[np.sort(first)[:jc.per_query]]
    out_q.append(np.full(keep.size, q, np.int32))
    out_i.append(imp.item[keep])
    out_g.append(imp.relevance[keep])
  return np.concatenate(out_q), np.concatenate(out_i), np.concatenate(out_g)


def _write_judgements(world: World, path: pathlib.Path) -> None:
  """interactions.jsonl of the small-label regime: graded judgements only, split by query."""
  share = world.config.judged.eval_share
  queries, items, grades = judged_pairs(world)
  with open(path, 'w', encoding='utf-8') as f:
    for q, i, g in zip(queries.tolist(), items.tolist(), grades.tolist()):
      text = world.queries.texts[q]
      digest = hashlib.sha256(('synthshop/judged/' + text).encode('utf-8')).digest()
      split = 'eval' if int.from_bytes(digest[:8], 'big') / 2.0**64 < share else 'train'
      f.write(_dumps({'item_id': world.catalog.item_ids[i], 'query': text, 'relevance': g,
                      'split': split}) + '\n')


def generate(config, out_dir) -> pathlib.Path:
  """Generates the dataset of `config` into out_dir (skipped if already complete); returns it."""
  config_lib.validate_config(config)
  out = pathlib.Path(out_dir).expanduser()
  if is_complete(out, config):
    return out
  _clear(out)
  world = build(config)
  _write_images(world, out)
  _write_items(world, out / 'items.jsonl')
  _write_queries(world, out / 'queries.jsonl')
  if config['judged']['num_queries']:
    _write_judgements(world, out / 'interactions.jsonl')
  else:
    _write_interactions(world, out / 'interactions.jsonl')
  tmp = out / (CONFIG_FILE + '.tmp')
  tmp.write_text(config_lib.config_json(config), encoding='utf-8')
  os.replace(tmp, out / CONFIG_FILE)
  return out


def load_or_generate(config, cache_dir) -> pathlib.Path:
  """The dataset of `config` under cache_dir/synthshop-<size>-<config hash>, generated once."""
  config_lib.validate_config(config)
  name = f'synthshop-{config["size"]}-{config_lib.config_hash(config)}'
  return generate(config, pathlib.Path(cache_dir).expanduser() / name)
