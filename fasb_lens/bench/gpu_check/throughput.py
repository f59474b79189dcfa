"""A device's matrix-product rate and memory bandwidth, and what they allow a dense
model (the roofline: compute-bound prompts, memory-bound decoding)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def measure_rates(device: str, dtype: torch.dtype) -> dict[str, float]:
    """The device's matrix-product rate (a 7B model's MLP product, FLOP/s) and memory
    bandwidth (a 1 GiB copy, bytes/s), best of three."""

    def best(run: Callable[[], None]) -> float:
        times = []
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    rows, width, hidden = (2048, 4096, 11008) if device != "cpu" else (256, 1024, 2816)
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, hidden, dtype=dtype, device=device)
    a @ b  # warm-up
    seconds = best(lambda: a @ b)
    big = torch.empty((1 << 30) // 2 if device != "cpu" else 1 << 24, dtype=dtype, device=device)
    target = torch.empty_like(big)
    copy = best(lambda: target.copy_(big))
    return {
        "matmul_flops_per_s": 2 * rows * width * hidden / seconds,
        "bandwidth_bytes_per_s": 2 * big.numel() * big.element_size() / copy,
    }


def throughput_estimate(
    rates: dict[str, float], *, parameters: float = 6.74e9, bytes_per_parameter: int = 2
) -> dict[str, float]:
    """A dense model's throughput from a device's rates (the roofline, no overheads):
    prompt tokens per second (compute-bound, ``2 * parameters`` FLOPs a token), and decoding
    tokens per second of one sequence (memory-bound: the weights are read once a step) and
    of a batch of 64 (whichever bound is lower). Defaults: LLaMA-2-7B in half precision."""
    flops = 2 * parameters
    weights = parameters * bytes_per_parameter
    prompt = rates["matmul_flops_per_s"] / flops
    one = rates["bandwidth_bytes_per_s"] / weights
    return {
        "prompt_tokens_per_s": round(prompt),
        "decode_tokens_per_s_batch_1": round(one, 1),
        "decode_tokens_per_s_batch_64": round(min(64 * one, prompt)),
    }
