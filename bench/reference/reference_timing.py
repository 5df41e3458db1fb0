"""What the Python reference scripts share: argument lists, the BLAS actually mapped into the
process, the dense FFN baseline, and the timing protocol of `moelab bench` (warm-ups, then the two
contenders sampled alternately so drifting load on a shared machine does not skew their ratio)."""
import json
import os
import re
import statistics
import time

import torch


def int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def add_table_arguments(ap):
    """The options every reference table takes: the (E, k) grid, sampling, threads, seed, JSON output."""
    ap.add_argument("--experts", type=int_list, default=[8, 64, 256])
    ap.add_argument("--k", type=int_list, default=[1, 2, 4])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the rows here as a JSON list")


def blas_libraries():
    torch.randn(64, 64) @ torch.randn(64, 64)  # make sure the BLAS is loaded
    names = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            base = os.path.basename(path).lower()
            if "blas" in base or "mkl" in base:
                names.add(path)
    return ", ".join(sorted(names)) or "none mapped"


def torch_header():
    """torch version, threads, BLAS: the first header line of every table."""
    blas_info = re.search(r"\bBLAS_INFO=([^,\s]+)", torch.__config__.show())
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()} (cpu_count {os.cpu_count()}), "
            f"BLAS_INFO={blas_info.group(1) if blas_info else '?'}, BLAS {blas_libraries()}, "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")


def dense_ffn(width, hidden):
    """Linear(d, hidden) -> ReLU -> Linear(hidden, d): a k-expert layer's active FLOPs with hidden = k*h."""
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, width)).train()


def backward_of_sum(model, x):
    """One sample of a model returning one tensor: forward, sum().backward(), grads set to none."""
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    x.grad = None


def interleaved_medians(first, second, warmup, samples):
    """Median ms of two argument-free callables, after `warmup` calls each, sampled alternately."""
    def timed(call):
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1e3

    for _ in range(warmup):
        first()
        second()
    first_ms, second_ms = [], []
    for i in range(samples):
        pair = [(first, first_ms), (second, second_ms)]
        for call, times in (pair if i % 2 == 0 else pair[::-1]):
            times.append(timed(call))
    return statistics.median(first_ms), statistics.median(second_ms)


def table_against_dense(args, label, case, make_moe, moe_sample, width, hidden, tokens, extra=None):
    """For each (E, k) of args.experts x args.k with k <= E: make_moe(E, k) against a dense FFN of
    k*hidden, both seeded by args.seed and sampled by interleaved_medians on one input [tokens, width];
    prints a markdown table row by row and writes the rows to args.json."""
    rows = []
    print(f"| E | k | dense ms | {label} ms | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for experts in args.experts:
        for k in args.k:
            if k > experts:
                continue
            torch.manual_seed(args.seed)
            moe = make_moe(experts, k)
            dense = dense_ffn(width, k * hidden)
            x = torch.randn(tokens, width, requires_grad=True)
            m, dn = interleaved_medians(lambda: moe_sample(moe, x), lambda: backward_of_sum(dense, x),
                                        args.warmup, args.samples)
            rows.append({"case": case, **(extra or {}), "experts": experts, "k": k, "bank": "ffn",
                         "ms": round(m, 3), "dense_ms": round(dn, 3), "ratio_vs_dense": round(m / dn, 3)})
            print(f"| {experts} | {k} | {dn:.1f} | {m:.1f} | {m / dn:.2f} |", flush=True)
            del moe, dense, x
    write_rows(args.json, rows)


def write_rows(path, rows):
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
