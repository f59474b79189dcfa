"""The report of a check run: lines to print, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fasb_lens.bench.gpu_check.results import CheckResult


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as lines to print: the checks, then the 7B estimate per dtype."""
    lines = [
        f"fasb-lens gpu-check on {report['device']} ({report['gpus']} GPU(s)), "
        f"torch {report['versions']['torch']}, CUDA {report['versions']['cuda']}"
    ]
    lines += [CheckResult(**result).line() for result in report["results"]]
    for dtype, estimate in report["estimate_7b"].items():
        rates = report["rates"][dtype]
        lines.append(
            f"{dtype:<9} rates: {rates['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, "
            f"{rates['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s -> a 7B model, per GPU: "
            f"{estimate['prompt_tokens_per_s']} prompt tokens/s, decoding "
            f"{estimate['decode_tokens_per_s_batch_1']} tokens/s alone, "
            f"{estimate['decode_tokens_per_s_batch_64']} in a batch of 64 (roofline)"
        )
    failed = report["failed"]
    lines.append("all checks passed" if not failed else f"{failed} check(s) FAILED")
    return lines


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as JSON (atomically)."""
    from fasb_lens import storage

    storage.write_text(path, json.dumps(report, indent=2))
