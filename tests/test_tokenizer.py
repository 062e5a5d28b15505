"""Tokenizer: hand-computed WordPiece ids, MiniLM ids, training, caching, trigram hashing."""

import pickle
import zlib

import numpy as np
import pytest

from mmret.data import tokenizer as tokenizer_lib

# Ids are line numbers: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 red=5 dress=6 ##es=7 wei=8 ##ß=9
# 白=10.
VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'red', 'dress', '##es', 'wei', '##ß', '白']


@pytest.fixture
def hand_tokenizer(tmp_path):
  (tmp_path / 'vocab.txt').write_text('\n'.join(VOCAB) + '\n', encoding='utf-8')
  return tokenizer_lib.Tokenizer.from_pretrained_dir(tmp_path)


def test_encode_hand_vocab(hand_tokenizer):
  tok = hand_tokenizer
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == len(VOCAB)
  ids, mask = tok.encode(['Red dresses', 'Weiß 白色', ''], max_len=6)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (3, 6)
  np.testing.assert_array_equal(ids, [[2, 5, 6, 7, 3, 0],    # red dress ##es
                                      [2, 8, 9, 10, 1, 3],   # wei ##ß 白 [UNK](色)
                                      [2, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])


def test_encode_truncates_but_keeps_sep(hand_tokenizer):
  ids, mask = hand_tokenizer.encode(['red red red red red'], max_len=4)
  np.testing.assert_array_equal(ids, [[2, 5, 5, 3]])
  assert mask.all()
  with pytest.raises(ValueError, match='max_len'):
    hand_tokenizer.encode(['red'], max_len=1)


def test_minilm_known_ids():
  tok = tokenizer_lib.Tokenizer.minilm()
  ids, mask = tok.encode(['hello world'], max_len=6)
  np.testing.assert_array_equal(ids, [[101, 7592, 2088, 102, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0]])
  assert (tok.vocab_size, tok.pad_id, tok.unk_id, tok.mask_id) == (30522, 0, 100, 103)


def test_train_save_load_and_pickle(tmp_path):
  texts = ['red dress', 'red dresses', 'white dress', 'Sommerkleid weiß', '白色连衣裙 👗']
  texts *= 3
  tok = tokenizer_lib.Tokenizer.train(texts, vocab_size=80)
  assert [tok.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert tok.vocab_size <= 80
  assert tok.tokens('Red Dress') == ['red', 'dress']
  ids, _ = tok.encode(['red dress'], max_len=5)
  np.testing.assert_array_equal(
      ids, [[2, tok.token_to_id('red'), tok.token_to_id('dress'), 3, 0]])
  loaded = tokenizer_lib.Tokenizer.from_pretrained_dir(tok.save(tmp_path / 'tok'))
  also = tokenizer_lib.Tokenizer.from_pretrained_dir(tmp_path / 'tok' / 'vocab.txt')
  unpickled = pickle.loads(pickle.dumps(tok))
  probe = ['Sommerkleid weiß 👗', 'red dresses']
  for other in (loaded, also, unpickled):
    np.testing.assert_array_equal(other.encode(probe, 8)[0], tok.encode(probe, 8)[0])


def test_build_tokenizer_caches_trained_vocab(tmp_path):
  texts = ['red dress', 'white shoes', 'blue jacket']
  first = tokenizer_lib.build_tokenizer('train', texts, 60, tmp_path)
  cached = list((tmp_path / 'tokenizers').iterdir())
  assert len(cached) == 1 and (cached[0] / 'tokenizer.json').is_file()
  second = tokenizer_lib.build_tokenizer('train', texts, 60, tmp_path)
  assert second.tokens('red shoes') == first.tokens('red shoes')
  assert len(list((tmp_path / 'tokenizers').iterdir())) == 1
  by_path = tokenizer_lib.build_tokenizer(str(cached[0]), [], 0, tmp_path)
  assert by_path.vocab_size == first.vocab_size


def test_char_trigrams_stable():
  ids, mask = tokenizer_lib.char_trigram_ids(['Weiß ab', '白色', ''], num_buckets=1000,
                                             max_trigrams=6)
  # '#weiß#' -> #we wei eiß iß#, '#ab#' -> #ab ab#; '#白色#' -> #白色 白色#.
  np.testing.assert_array_equal(ids, [[896, 420, 228, 394, 463, 950],
                                      [125, 621, 0, 0, 0, 0],
                                      [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids > 0)
  assert ids[0, 4] == 1 + zlib.crc32('#ab'.encode()) % 999
  cut, _ = tokenizer_lib.char_trigram_ids(['Weiß ab'], num_buckets=1000, max_trigrams=3)
  np.testing.assert_array_equal(cut, [[896, 420, 228]])
