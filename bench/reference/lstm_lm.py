#!/usr/bin/env python3
"""Independent PyTorch reference for moelab's LSTM language model (Debian's python3-torch).

Used to tell a moelab defect from a property of the recipe: it builds the same model
(embedding -> LSTM -> optional FFN block with residual -> LSTM -> adaptive or full softmax)
and the same contiguous batches, and prints the mean training loss every 50 steps.

  OMP_NUM_THREADS=1 /usr/bin/python3 bench/reference/lstm_lm.py --middle dense --optimizer sgd --lr 20 --clip 0.25
"""
import argparse
import math
import time
from collections import Counter

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="data/kjv/train.txt")
    ap.add_argument("--middle", choices=["none", "dense"], default="none")
    ap.add_argument("--softmax", choices=["adaptive", "full"], default="adaptive")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="sgd")
    ap.add_argument("--lr", type=float, default=20.0)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--embed-init", type=float, default=0.1, help="uniform(-a, a) for the embedding")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    with open(args.train) as f:
        words = f.read().replace("\n", " <eos> ").split()
    vocab = {w: i for i, (w, _) in enumerate(Counter(words).most_common())}
    stream = torch.tensor([vocab[w] for w in words])
    length = len(stream) // args.batch
    columns = stream[: length * args.batch].view(args.batch, length).t().contiguous()  # [L, B]
    d, v = args.width, len(vocab)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(v, d)
            self.embedding.weight.data.uniform_(-args.embed_init, args.embed_init)
            self.lower, self.upper = torch.nn.LSTM(d, d), torch.nn.LSTM(d, d)
            self.block = None
            if args.middle == "dense":
                self.block = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.ReLU(), torch.nn.Linear(4 * d, d))
            self.dropout = torch.nn.Dropout(0.1)
            if args.softmax == "adaptive":
                self.head = torch.nn.AdaptiveLogSoftmaxWithLoss(d, v, [2000, 6000], div_value=4.0)
            else:
                self.head = torch.nn.Linear(d, v)

        def forward(self, x, state):
            x, lower = self.lower(self.dropout(self.embedding(x)), state[0])
            if self.block is not None:
                x = x + self.dropout(self.block(x))
            x, upper = self.upper(x, state[1])
            return self.dropout(x), (lower, upper)

    model = Model()
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    state, total, started = (None, None), 0.0, time.time()
    windows = (length - 1) // args.bptt
    for step in range(1, args.steps + 1):
        start = ((step - 1) % windows) * args.bptt
        if start == 0:
            state = (None, None)
        x, y = columns[start : start + args.bptt], columns[start + 1 : start + args.bptt + 1]
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        features, state = model(x, state)
        state = tuple((h.detach(), c.detach()) for h, c in state)
        features, y = features.reshape(-1, d), y.reshape(-1)
        if args.softmax == "adaptive":
            loss = model.head(features, y).loss
        else:
            loss = torch.nn.functional.cross_entropy(model.head(features), y)
        optimizer.zero_grad()
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        total += loss.item()
        if step % 50 == 0:
            print(f"step {step}  loss {total / 50:.3f}  ppl {math.exp(total / 50):.1f}  {time.time() - started:.0f} s", flush=True)
            total = 0.0


if __name__ == "__main__":
    main()
