#!/usr/bin/env python3
"""PyTorch reference for `memtrain bench`: the same GPT, trained the same way, timed the same way.

The geometry of memtrain's presets (byte vocabulary of 256, learned positions, pre-LayerNorm
blocks, fused QKV, GELU MLP of width 4d, LM head tied to the token embedding), AdamW with
burn's defaults (betas 0.9/0.999, eps 1e-5, weight decay 1e-4) at a constant learning rate,
and attention by `scaled_dot_product_attention` (PyTorch's fused CPU kernel). Batches are
random windows of the text's bytes. It prints every step's time and, last, one line

    torch: median X s over N steps (first step not counted), loss L

that scripts/speed-pair.sh reads. With --profile it also prints where the time goes
(torch.profiler, self CPU time grouped by op kind, with FLOPs and GFLOP/s where PyTorch counts
them) for comparison with `memtrain bench --profile`.

Not needed by CI or the tests. PyTorch from PyPI:

    python3 -m venv ~/.cache/memtrain/torchenv
    ~/.cache/memtrain/torchenv/bin/pip install torch numpy
    ~/.cache/memtrain/torchenv/bin/python scripts/torch_reference.py --data ../shared/data/tinyshakespeare.txt
"""

import argparse
import math
import statistics
import sys
import time

PRESETS = {
    # layers, d_model, heads, max_seq
    "tiny": (2, 64, 4, 64),
    "small": (6, 384, 6, 256),
    "gpt2": (12, 768, 12, 1024),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=None, help="default: the preset's max_seq")
    p.add_argument("--steps", type=int, default=6, help="steps; the first is not timed")
    p.add_argument("--threads", type=int, default=None, help="default: every core")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", required=True, help="a UTF-8 text file (bytes are the tokens)")
    p.add_argument("--profile", action="store_true", help="print time per op kind")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: torch.autocast('cpu', bfloat16) around forward and loss",
    )
    args = p.parse_args()
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"invalid --{name}: got {getattr(args, name)}, expected a positive integer")
    return args


def build(torch, layers, d, heads, max_seq):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d, eps=1e-5)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d, eps=1e-5)
            self.fc = nn.Linear(d, 4 * d)
            self.out = nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(256, d)
            self.wpe = nn.Embedding(max_seq, d)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(d, eps=1e-5)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
            for b in self.blocks:
                nn.init.normal_(b.out.weight, std=0.02 / math.sqrt(2 * layers))

        def forward(self, tokens, targets):
            t = tokens.shape[1]
            x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
            for b in self.blocks:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.t()
            return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))

    return Gpt()


def profile_table(prof, steps):
    """Self CPU time per op kind over the profiled steps, with FLOPs where counted."""
    kinds = {}
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    print(f"torch profile: the 15 ops with the most self CPU time, ms per step")
    for e in events[:15]:
        print(f"  {e.key:<50} {e.self_cpu_time_total / 1e3 / steps:9.1f}  x{e.count // steps}")
    for e in events:
        low = e.key.lower()
        if low in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
            kind = "matmul"
        elif "attention" in low:
            kind = "attention"
        elif "layer_norm" in low:
            kind = "norm"
        elif "gelu" in low:
            kind = "activation"
        elif "softmax" in low or "nll" in low or "cross_entropy" in low:
            kind = "cross-entropy"
        elif "embedding" in low:
            kind = "embedding"
        elif "adam" in low or "_foreach" in low or "optimizer" in low:
            kind = "optimizer"
        elif low == "aten::sum":
            kind = "bias grad"
        else:
            kind = "other"
        us, flops = kinds.get(kind, (0.0, 0))
        kinds[kind] = (us + e.self_cpu_time_total, flops + (e.flops or 0))
    total = sum(us for us, _ in kinds.values())
    print(f"torch profile over {steps} steps (self CPU time; FLOPs as PyTorch counts them):")
    print(f"  {'kind':<14} {'ms/step':>9} {'share':>7} {'GFLOP/step':>11} {'GFLOP/s':>9}")
    for kind, (us, flops) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        ms = us / 1e3 / steps
        gflop = flops / 1e9 / steps
        rate = f"{gflop / (ms / 1e3):9.1f}" if flops else f"{'':>9}"
        print(f"  {kind:<14} {ms:9.1f} {100 * us / total:6.1f}% {gflop:11.2f} {rate}")


def main():
    args = parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("torch_reference: PyTorch is not installed (see the docstring)")
    layers, d, heads, max_seq = PRESETS[args.preset]
    seq = args.seq or max_seq
    if seq > max_seq:
        sys.exit(f"torch_reference: invalid --seq: got {seq}, expected at most {max_seq}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.data, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    if len(data) <= seq + 1:
        sys.exit(f"torch_reference: {args.data} has {len(data)} bytes, expected more than {seq + 1}")
    model = build(torch, layers, d, heads, max_seq)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=1e-4
    )
    gen = torch.Generator().manual_seed(args.seed)

    def batch():
        starts = torch.randint(0, len(data) - seq - 1, (args.batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        return x, y

    def step():
        x, y = batch()
        t = time.perf_counter()
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t, loss.item()

    print(
        f"torch {torch.__version__}: preset {args.preset}, batch {args.batch}, seq {seq}, "
        f"{torch.get_num_threads()} threads, {args.precision}, sdpa"
    )
    times, loss = [], float("nan")
    for s in range(args.steps):
        if args.profile and s == min(1, args.steps - 1):
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU], with_flops=True)
            prof.__enter__()
        seconds, loss = step()
        times.append(seconds)
        print(f"step {s + 1}: {seconds:.3f} s, loss {loss:.4f}", flush=True)
    if args.profile:
        prof.__exit__(None, None, None)
        profile_table(prof, max(1, args.steps - 1))
    timed = times[1:] if len(times) > 1 else times
    print(
        f"torch: median {statistics.median(timed):.4f} s over {len(timed)} steps "
        f"(first step not counted), loss {loss:.4f}"
    )


if __name__ == "__main__":
    main()
