"""Text to fixed-shape integer arrays: WordPiece tokens and hashed character trigrams.

`Tokenizer` wraps a HuggingFace `tokenizers` WordPiece model: the MiniLM / BERT-uncased
vocabulary (ids match the pretrained encoder: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102,
[MASK]=103), any vocab.txt / tokenizer.json, or a vocabulary trained on the catalog
([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4).

`char_trigram_ids` gives the Que2Engage query-side trigram features (DESIGN.md §4): the
character trigrams of '#' + word + '#', hashed with crc32 (stable across runs and processes,
unlike Python's `hash`) into buckets 1..num_buckets-1; bucket 0 is padding.
"""

import hashlib
import pathlib
import shutil
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import implementations

from mmret import pretrained

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


class Tokenizer:
  """WordPiece tokenizer producing [CLS] ... [SEP] id arrays with padding masks."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    # We truncate and pad ourselves (encode), so settings stored in tokenizer.json must not.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    self._tok = tokenizer
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
      raise ValueError(f'vocabulary lacks the special tokens {missing}.')
    self._special = ids

  # --- construction ---------------------------------------------------------------------------

  @classmethod
  def from_pretrained_dir(cls, path: str | pathlib.Path, lowercase: bool = True) -> 'Tokenizer':
    """From a directory (or file) with tokenizer.json or a BERT vocab.txt.

    tokenizer.json carries its own normaliser; `lowercase` only applies to a bare vocab.txt.
    """
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
      if (path / 'tokenizer.json').is_file():
        path = path / 'tokenizer.json'
      elif (path / 'vocab.txt').is_file():
        path = path / 'vocab.txt'
      else:
        raise FileNotFoundError(f'{path} holds neither tokenizer.json nor vocab.txt.')
    if not path.is_file():
      raise FileNotFoundError(f'tokenizer file {path} does not exist.')
    if path.suffix == '.json':
      return cls(tokenizers.Tokenizer.from_file(str(path)))
    wordpiece = implementations.BertWordPieceTokenizer(str(path), lowercase=lowercase)
    return cls(wordpiece._tokenizer)  # pylint: disable=protected-access

  @classmethod
  def minilm(cls) -> 'Tokenizer':
    """The vocabulary of the pretrained all-MiniLM-L6-v2 text encoder (BERT uncased, 30522)."""
    return cls.from_pretrained_dir(pretrained.minilm_dir())

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> 'Tokenizer':
    """Trains a BERT-style WordPiece vocabulary; specials first, so [PAD] = 0."""
    wordpiece = implementations.BertWordPieceTokenizer(lowercase=lowercase)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    return cls(wordpiece._tokenizer)  # pylint: disable=protected-access

  def save(self, directory: str | pathlib.Path) -> pathlib.Path:
    """Writes tokenizer.json and vocab.txt (ids = line numbers) into directory."""
    directory = pathlib.Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    self._tok.save(str(directory / 'tokenizer.json'))
    vocab = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    (directory / 'vocab.txt').write_text(''.join(t + '\n' for t, _ in vocab), encoding='utf-8')
    return directory

  # --- vocabulary -----------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._special['[PAD]']

  @property
  def unk_id(self) -> int:
    return self._special['[UNK]']

  @property
  def cls_id(self) -> int:
    return self._special['[CLS]']

  @property
  def sep_id(self) -> int:
    return self._special['[SEP]']

  @property
  def mask_id(self) -> int:
    return self._special['[MASK]']

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def tokens(self, text: str) -> list[str]:
    """WordPiece tokens of one text, without specials (for inspection and tests)."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  # --- encoding -------------------------------------------------------------------------------

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids int32 [N, max_len], mask bool [N, max_len]).

    Row layout: [CLS] tokens... [SEP] [PAD]...; tokens beyond max_len - 2 are cut (the [SEP]
    stays, so every row ends its text the same way); mask is True on [CLS], tokens and [SEP].
    """
    if max_len < 2:
      raise ValueError(f'max_len must be >= 2 to hold [CLS] and [SEP], got {max_len}.')
    texts = list(texts)
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    lengths = np.zeros(len(texts), np.int64)
    encodings = self._tok.encode_batch(texts, add_special_tokens=False) if texts else []
    for row, enc in enumerate(encodings):
      body = enc.ids[:max_len - 2]
      n = len(body)
      ids[row, 0] = self.cls_id
      ids[row, 1:n + 1] = body
      ids[row, n + 1] = self.sep_id
      lengths[row] = n + 2
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    return ids, mask

  def __getstate__(self):
    # tokenizers.Tokenizer pickles via its JSON; keep that explicit for Grain worker processes.
    return {'json': self._tok.to_str()}

  def __setstate__(self, state):
    self.__init__(tokenizers.Tokenizer.from_str(state['json']))


def char_trigram_ids(texts: Sequence[str], num_buckets: int, max_trigrams: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Hashed character trigrams -> (ids int32 [N, max_trigrams], mask bool [N, max_trigrams]).

  Text is lower-cased and split on whitespace; each word w contributes the trigrams of
  '#' + w + '#' in order ('#ab#' -> '#ab', 'ab#'); a trigram's id is
  1 + crc32(utf-8 bytes) % (num_buckets - 1). Trigrams beyond max_trigrams are cut.
  """
  if num_buckets < 2:
    raise ValueError(f'num_buckets must be >= 2 (bucket 0 is padding), got {num_buckets}.')
  ids = np.zeros((len(texts), max_trigrams), np.int32)
  for row, text in enumerate(texts):
    out = []
    for word in text.lower().split():
      padded = f'#{word}#'
      out.extend(1 + zlib.crc32(padded[k:k + 3].encode('utf-8')) % (num_buckets - 1)
                 for k in range(len(padded) - 2))
      if len(out) >= max_trigrams:
        break
    out = out[:max_trigrams]
    ids[row, :len(out)] = out
  return ids, ids > 0


def texts_fingerprint(texts: Iterable[str], vocab_size: int) -> str:
  """A short stable hash of a training corpus and vocabulary size (the tokenizer cache key)."""
  h = hashlib.sha256(f'wordpiece-v1|{vocab_size}|'.encode())
  for t in texts:
    h.update(t.encode('utf-8'))
    h.update(b'\x00')
  return h.hexdigest()[:16]


def build_tokenizer(spec: str, texts: Sequence[str], vocab_size: int,
                    cache_dir: str | pathlib.Path) -> Tokenizer:
  """The tokenizer named by a config: 'minilm' | 'train' | a path to a vocabulary.

  'train' trains a WordPiece vocabulary of vocab_size on texts (e.g. catalog titles and train
  queries) once and caches it under cache_dir/tokenizers/wordpiece-<hash of texts>.
  """
  if spec == 'minilm':
    return Tokenizer.minilm()
  if spec == 'train':
    texts = list(texts)
    directory = (pathlib.Path(cache_dir).expanduser() / 'tokenizers' /
                 f'wordpiece-{texts_fingerprint(texts, vocab_size)}')
    if (directory / 'tokenizer.json').is_file():
      return Tokenizer.from_pretrained_dir(directory)
    tok = Tokenizer.train(texts, vocab_size)
    # Write to a temporary name first: a crash must not leave a half-written cache entry.
    tmp = directory.with_name(directory.name + '.tmp')
    tok.save(tmp)
    if directory.exists():  # another process won the race; its files are equivalent
      shutil.rmtree(tmp)
    else:
      tmp.replace(directory)
    return tok
  return Tokenizer.from_pretrained_dir(spec)
