#!/usr/bin/env python3
"""Times the MoE layer a PyTorch user writes today (sort by expert, one product per expert on its
contiguous slice, index_add back) against a dense FFN, on the shapes and protocol of moelab bench.

This is the second reference of `moelab bench` (issue 20): not a port of a published file but the
pattern that current PyTorch MoE code follows (torchtitan, DeepSeek-V3's inference code, the
MegaBlocks/ScatterMoE ideas without their GPU kernels), written in ~30 lines:
  - router: logits = x @ w_gate, softmax, top-k; gate weights renormalised over the k chosen.
  - dispatch: the N*k (token, slot) pairs sorted by expert (argsort, stable), the routed rows
    gathered once; per-expert counts taken to the host once (bincount(...).tolist()).
  - experts: weights stacked as parameters w_in [E, d, h], b_in [E, h], w_out [E, h, d], b_out [E, d];
    --mode loop: for each expert with rows, relu(rows @ w_in[e] + b_in[e]) @ w_out[e] + b_out[e] on
    its contiguous slice; --mode grouped_mm: torch._grouped_mm over all experts at once (PyTorch
    >= 2.8 where the build has it for this device and type; refused otherwise).
  - combine: rows scaled by their gate weight, index_add_ into a zero output of N rows.
  - dense: Linear(d, k*h) -> ReLU -> Linear(k*h, d), the same active FLOPs per token.
One sample = forward + (y.sum()).backward() + zero grads (set_to_none). N = 2048, d = 512, h = 1024
by default. Per case: --warmup samples each, then --samples timed samples each, interleaved (the
order alternates every sample); medians, ratio = moe ms / dense ms. The header line names torch, the
threads and the BLAS mapped into the process. Run it on a quiet machine, the same session as
`moelab bench`, once with Debian's python3-torch 1.13 and once with PyPI's torch 2.x:

  /usr/bin/python3 bench/reference/sorted_grouped_moe.py --json /tmp/sorted_113.json
  VENV/bin/python bench/reference/sorted_grouped_moe.py --json /tmp/sorted_2x.json
(The build's cached venv, ~/.cache/moelab/torch-*, holds the torch wheel without its Python
dependencies; to import torch there first run
  VENV/bin/python -m pip install typing_extensions sympy filelock networkx jinja2 fsspec)
  VENV/bin/python bench/reference/sorted_grouped_moe.py --mode grouped_mm --experts 8 --k 2
"""
import argparse

import torch

from reference_timing import add_table_arguments, backward_of_sum, table_against_dense, torch_header


class SortedMoE(torch.nn.Module):
    def __init__(self, width, hidden, experts, k, mode):
        super().__init__()
        self.k, self.experts, self.mode = k, experts, mode
        scale_in, scale_out = width ** -0.5, hidden ** -0.5
        self.w_gate = torch.nn.Parameter(torch.randn(width, experts) * scale_in)
        self.w_in = torch.nn.Parameter(torch.randn(experts, width, hidden) * scale_in)
        self.b_in = torch.nn.Parameter(torch.zeros(experts, hidden))
        self.w_out = torch.nn.Parameter(torch.randn(experts, hidden, width) * scale_out)
        self.b_out = torch.nn.Parameter(torch.zeros(experts, width))

    def forward(self, x):
        gates = torch.softmax(x @ self.w_gate, dim=-1)
        top_w, top_e = gates.topk(self.k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        flat_e = top_e.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        token = order // self.k
        rows = x[token]
        counts = torch.bincount(flat_e, minlength=self.experts)
        if self.mode == "grouped_mm":
            offsets = torch.cumsum(counts, 0).to(torch.int32)
            h = torch.relu(torch._grouped_mm(rows, self.w_in, offs=offsets) +
                           torch.repeat_interleave(self.b_in, counts, dim=0))
            out = torch._grouped_mm(h, self.w_out, offs=offsets) + torch.repeat_interleave(self.b_out, counts, dim=0)
        else:
            # unbind, not w_in[e]: the backward of each indexing op would write a full [E, d, h]
            # gradient (E^2 d h bytes per pass; 12 s per sample at E = 64 on torch 1.13), while
            # unbind's backward stacks the per-expert gradients once.
            w_in, b_in, w_out, b_out = (t.unbind(0) for t in (self.w_in, self.b_in, self.w_out, self.b_out))
            pieces, start = [], 0
            for e, n in enumerate(counts.tolist()):
                if n == 0:
                    continue
                block = rows[start:start + n]
                pieces.append(torch.relu(block @ w_in[e] + b_in[e]) @ w_out[e] + b_out[e])
                start += n
            out = torch.cat(pieces)
        out = out * top_w.reshape(-1)[order].unsqueeze(1)
        return torch.zeros_like(x).index_add_(0, token, out)


def check(mode):
    """The layer against a per-token loop over its chosen experts, on a small case (run before timing)."""
    torch.manual_seed(0)
    # float64 where the products allow it (_grouped_mm may take only float32/bf16).
    dtype, tolerance = (torch.double, 1e-10) if mode == "loop" else (torch.float, 1e-4)
    moe = SortedMoE(8, 16, 5, 2, mode).to(dtype)  # widths of 16-byte multiples, as _grouped_mm wants
    x = torch.randn(9, 8, dtype=dtype)
    gates = torch.softmax(x @ moe.w_gate, dim=-1)
    want = torch.zeros_like(x)
    for t in range(x.shape[0]):
        top_w, top_e = gates[t].topk(2)
        for w, e in zip((top_w / top_w.sum()).tolist(), top_e.tolist()):
            want[t] += w * (torch.relu(x[t] @ moe.w_in[e] + moe.b_in[e]) @ moe.w_out[e] + moe.b_out[e])
    got = moe(x)
    if not torch.allclose(got, want, atol=tolerance):
        raise SystemExit(f"sorted_grouped_moe: the {mode} layer differs from the per-token loop by "
                         f"{(got - want).abs().max().item():.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["loop", "grouped_mm"], default="loop")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    add_table_arguments(ap)
    args = ap.parse_args()
    if args.mode == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        raise SystemExit(f"sorted_grouped_moe: torch {torch.__version__} has no torch._grouped_mm (PyTorch >= 2.8)")

    check(args.mode)
    torch.set_num_threads(args.threads)
    print(f"# {torch_header()}, mode {args.mode}")
    print(f"# checked against a per-token loop; N {args.tokens}, d {args.dim}, h {args.hidden}, forward+backward, "
          f"{args.warmup} warm-up + median of {args.samples} samples", flush=True)

    table_against_dense(args, "sorted", f"sorted_{args.mode}",
                        lambda experts, k: SortedMoE(args.dim, args.hidden, experts, k, args.mode).train(),
                        backward_of_sum, args.dim, args.hidden, args.tokens, extra={"torch": torch.__version__})


if __name__ == "__main__":
    main()
