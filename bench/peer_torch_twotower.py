r"""The PyTorch two-tower a user would pick instead of mmret, timed on the same work.

Hugging Face `BertModel` (BERT-base shape, random init, shared weights for both towers), query
16 + item 64 token ids with some padding (query 10 valid, item 56 valid), mean pooling over valid
tokens, L2-normalised float32 vectors, in-batch softmax with logits x 20 (= mmret's two-tower
mode: `configs/pretrain.py:two_tower`, QIC softmax at temperature 0.05, one direction), bf16
autocast, SDPA attention, fused AdamW. Times eager and `torch.compile` steps (median of
--steps after --warmup) and prints one JSON line: examples/s, step ms and the utilisation its
FLOP count implies against --peak_tflops.

  python bench/peer_torch_twotower.py --batch_size 1024 --out /tmp/peer_1024.json

PyTorch and transformers are NOT mmret dependencies: this file runs only where they are
installed (bench/gpu.sh skips it otherwise). It needs a CUDA device.
"""

import argparse
import json
import pathlib
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=512)
  parser.add_argument('--query_len', type=int, default=16)
  parser.add_argument('--item_len', type=int, default=64)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--peak_tflops', type=float, default=989.0, help='H100/H200 dense bf16')
  parser.add_argument('--modes', default='eager,compiled')
  parser.add_argument('--out', default=None)
  return parser.parse_args(argv)


def step_flops(n_dense: int, b: int, lq: int, li: int, width=768, layers=12) -> float:
  """Training FLOPs of one step: 6 x dense parameters x tokens, plus attention's two
  products (QK^T and AV), forward and backward (x3), per layer."""
  attention = 3 * 2 * 2 * layers * width * b * (lq * lq + li * li)
  return 6 * n_dense * b * (lq + li) + attention


def main(argv=None):
  args = parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import BertConfig, BertModel  # pylint: disable=g-import-not-at-top

  b, lq, li = args.batch_size, args.query_len, args.item_len
  cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                   num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
                   attn_implementation='sdpa')
  dev = 'cuda'
  enc = BertModel(cfg, add_pooling_layer=False).to(dev)
  opt = torch.optim.AdamW(enc.parameters(), lr=1e-4, fused=True)

  def pool(hidden, mask):
    v = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(v.float(), dim=-1)

  def step(q, qm, d, dm):
    with torch.autocast('cuda', dtype=torch.bfloat16):
      vq = pool(enc(input_ids=q, attention_mask=qm).last_hidden_state, qm)
      vd = pool(enc(input_ids=d, attention_mask=dm).last_hidden_state, dm)
    logits = vq @ vd.T * 20.0
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(b, device=dev))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  g = torch.Generator(device=dev).manual_seed(0)
  q = torch.randint(1000, 30000, (b, lq), device=dev, generator=g)
  d = torch.randint(1000, 30000, (b, li), device=dev, generator=g)
  qm, dm = torch.ones(b, lq, device=dev), torch.ones(b, li, device=dev)
  qm[:, 10:] = 0
  dm[:, 56:] = 0
  n_dense = sum(p.numel() for n, p in enc.named_parameters() if 'embeddings' not in n)
  flops = step_flops(n_dense, b, lq, li)
  result = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(),
            'batch_size': b, 'query_len': lq, 'item_len': li, 'flops_per_step': flops}
  fns = {'eager': step, 'compiled': torch.compile(step)}
  for name in args.modes.split(','):
    fn = fns[name]
    tic = time.perf_counter()
    for _ in range(args.warmup):
      fn(q, qm, d, dm)
    torch.cuda.synchronize()
    warm_seconds = time.perf_counter() - tic
    times = []
    for _ in range(args.steps):
      tic = time.perf_counter()
      fn(q, qm, d, dm)
      torch.cuda.synchronize()
      times.append(time.perf_counter() - tic)
    med = sorted(times)[len(times) // 2]
    result[name] = {'step_ms': med * 1e3, 'examples_per_sec': b / med,
                    'utilisation': flops / med / (args.peak_tflops * 1e12),
                    'warmup_seconds': warm_seconds}
  text = json.dumps(result)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + '\n')
  return result


if __name__ == '__main__':
  main()
