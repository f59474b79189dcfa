"""``fasb-lens gpu-check``: the checks only a GPU can run, with a short printed report."""

from __future__ import annotations

import argparse


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.bench.gpu_check import GpuCheckSettings
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import add_options

    add_options(parser, GpuCheckSettings)
    add_options(parser, ModelOptions, exclude=("dtype",))  # --dtypes says which
    parser.add_argument("--out", default="gpu_check.json", help="the report as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from fasb_lens.bench.gpu_check import GpuCheckSettings, report_lines, run_checks, write_report
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import from_args

    settings = from_args(GpuCheckSettings, args)
    options = from_args(ModelOptions, args)
    if (options.device or "cuda").startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "no CUDA device here; `--device cpu --dtypes float32` runs the same checks on the CPU"
        )
    device = options.device or "cuda"
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    print(f"fasb-lens gpu-check on {name}: {', '.join(settings.dtypes)}", flush=True)
    report = run_checks(options, settings, on_result=lambda r: print(r.line(), flush=True))
    print("\n".join(report_lines(report)[1 + len(report["results"]) :]))
    write_report(report, args.out)
    print(f"written to {args.out}")
    return 1 if report["failed"] else 0
