#!/usr/bin/env python3
"""Times the widely used Python port of Shazeer et al.'s sparsely-gated MoE layer against a dense FFN.

The port is github.com/davidmrau/mixture-of-experts, file moe.py, class MoE. It is not part of
moelab: this script imports it at run time from --port-dir (the directory holding moe.py), e.g.

  git --git-dir=<bare checkout> show HEAD:moe.py > /tmp/moe_port/moe.py

What it measures, on Debian's python3-torch 1.13 (CPU), with the same definition as moelab's C++
benchmark: N = 2048 tokens, d = 512 (input and output width), expert hidden h = 1024.
  - port: MoE(input_size=d, output_size=d, num_experts=E, hidden_size=h, k=k, noisy_gating=True)
    in training mode; one sample = y, aux = moe(x) for x [N, d] (requires_grad), then
    (y.sum() + aux).backward(), then zero grads (set_to_none=True).
  - dense: Linear(d, k*h) -> ReLU -> Linear(k*h, d) (biases), the same active FLOPs per token as
    the port's k experts; one sample = y.sum().backward(), then zero grads (set_to_none=True).
Per case: 2 warm-up samples each, then --samples timed samples each, interleaved (the order
alternates every sample), and the median of each is reported with ratio = port ms / dense ms.
torch.set_num_threads(os.cpu_count()) is called first (LibTorch starts with 1 thread here; --threads
overrides it); the header line gives the thread count and the BLAS library actually mapped into the
process. Time it on an otherwise idle machine: with OpenMP, a core taken by another process stalls
every parallel op at its barrier, and the port's many small per-expert ops suffer far more than the
dense FFN's few large ones (the ratio is then inflated several-fold).

Things to know about the port when reading the numbers: it routes with a SparseDispatcher
(torch.nonzero + sort, a gather of the routed rows, torch.split by per-expert counts taken to the
host with .tolist(), a Python loop over all E experts, torch.cat, a multiply by the gates and an
index_add into zeros), its experts end with a Softmax over the output width, and its aux loss is
0.01 * (CV^2(importance) + CV^2(load)). It runs unchanged on torch 1.13: no shim is applied.

  /usr/bin/python3 bench/reference/python_port_moe.py --port-dir /tmp/moe_port --json /tmp/port.json
  /usr/bin/python3 bench/reference/python_port_moe.py --port-dir /tmp/moe_port --experts 8 --k 1 --samples 2
"""
import argparse
import hashlib
import importlib.util
import os

import torch

from reference_timing import add_table_arguments, table_against_dense, torch_header

TOKENS, WIDTH, HIDDEN = 2048, 512, 1024


def load_port(port_dir):
    path = os.path.join(port_dir, "moe.py")
    spec = importlib.util.spec_from_file_location("moe_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return module, path, digest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-dir", required=True, help="directory holding the port's moe.py")
    add_table_arguments(ap)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    port, port_path, digest = load_port(args.port_dir)
    print(f"# {torch_header()}, port {port_path} sha256 {digest}")
    print(f"# N {TOKENS}, d {WIDTH}, h {HIDDEN}, noisy gating, training mode, forward+backward, "
          f"{args.warmup} warm-up + median of {args.samples} samples", flush=True)

    def port_sample(model, x):
        y, aux = model(x)
        (y.sum() + aux).backward()
        model.zero_grad(set_to_none=True)
        x.grad = None

    table_against_dense(args, "port", "python_port",
                        lambda experts, k: port.MoE(input_size=WIDTH, output_size=WIDTH, num_experts=experts,
                                                    hidden_size=HIDDEN, k=k, noisy_gating=True).train(),
                        port_sample, WIDTH, HIDDEN, TOKENS)


if __name__ == "__main__":
    main()
