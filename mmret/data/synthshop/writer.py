"""Writes a SynthShop world to disk in the bring-your-own-data format (ARCHITECTURE.md, records).

  <out_dir>/items.jsonl         item_id, title, description, category, image (absent = no image),
                                context {price, rating, condition}, attributes, title_omits
  <out_dir>/images/<id>.png     RGB pictures, relative paths in items.jsonl
  <out_dir>/queries.jsonl       query, attributes
  <out_dir>/interactions.jsonl  one line per impression: query, item_id, page_id, position
                                (0 = top), click, purchase, engaged, relevance, day
  <out_dir>/synthshop.json      the config used; written last, so it marks a complete dataset

Output is byte-identical for the same config: JSON with sorted keys, ensure_ascii=False and
rounded floats; PNGs from pillow, which stores no timestamp.
"""

import dataclasses
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
