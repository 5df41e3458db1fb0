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


def write_rows(path, rows):
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
