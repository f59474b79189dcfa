"""``fasb-lens generate``: answer questions (or continue prompts) under a steering policy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TextIO

from fasb_lens.commands._common import model_for
from fasb_lens.options import AT_LEAST_ONE, bounded, non_empty


def arguments(parser: argparse.ArgumentParser) -> None:
    from fasb_lens.data import PROMPTS
    from fasb_lens.generation import GenerationConfig
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import add_options
    from fasb_lens.policies import POLICIES, PolicySettings

    parser.add_argument("--artifact", required=True, help="folder written by `fit`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--question", type=non_empty, help="one question (wrapped in the QA or chat format)"
    )
    source.add_argument("--prompt", type=non_empty, help="a raw prompt, used as is")
    source.add_argument("--questions-file", help="a text file, one question per line")
    parser.add_argument(
        "--policy", choices=POLICIES.choices(), default="fasb", help="steering policy"
    )
    # the policy's settings; any not given is the artifact's (stored by `fit`)
    add_options(parser, PolicySettings, only_given=True)
    add_options(parser, GenerationConfig)
    add_options(parser, ModelOptions, defaults={"name": None, "dtype": None})
    parser.add_argument("--format", choices=["qa", "chat"], default="qa")
    parser.add_argument(
        "--qa-prompt",
        choices=PROMPTS,
        default="authors",
        help="the QA format's instruction and primer: authors (TruthfulQA's, bundled; the "
        "default, as reproduce uses them) or builtin (fasb_lens' own)",
    )
    parser.add_argument("--primer", help="QA primer file (default: the --qa-prompt's)")
    parser.add_argument("--instruction", help="instruction file (default: the --qa-prompt's)")
    parser.add_argument("--caa", help="folder with a CAA vector (for --policy caa)")
    parser.add_argument("--batch-size", type=bounded(int, AT_LEAST_ONE), default=8)
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt")
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the tokens by p_true under each answer (auto: on a terminal, unless "
        "NO_COLOR is set)",
    )


def _prompt_texts(args: argparse.Namespace, model) -> tuple[list[str], list[str]]:
    """(labels shown to the user, prompt texts) from --prompt, --question or --questions-file."""
    from fasb_lens.data import read_lines, truthfulqa_prompt_format
    from fasb_lens.models import chat_prompt

    if args.prompt is not None:
        return [args.prompt], [args.prompt]
    if args.question is not None:
        questions = [args.question]
    else:
        questions = read_lines(args.questions_file, "a text file of questions, one per line")
    if args.format == "chat":
        return questions, [chat_prompt(model, question) for question in questions]
    fmt = truthfulqa_prompt_format(
        prompt=args.qa_prompt, primer=args.primer, instruction=args.instruction
    )
    return questions, [fmt.generation_prompt(question) for question in questions]


def _caa(args: argparse.Namespace):
    from fasb_lens import storage
    from fasb_lens.policies import policy_spec
    from fasb_lens.steering import CAAVector

    if "caa" not in policy_spec(args.policy).needs:
        return None
    folder = args.caa or args.artifact
    if not storage.has_artifact(folder, storage.CAA):
        raise ValueError(
            f"{folder} holds no CAA vector; run `collect` and `fit` again or pass --caa"
        )
    return CAAVector.load(folder)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fasb_lens.generation import QA_STOP, GenerationConfig, generate
    from fasb_lens.models import ModelOptions
    from fasb_lens.options import from_args
    from fasb_lens.policies import PolicySettings, make_policy
    from fasb_lens.steering import Steering

    steering = Steering.load(args.artifact)
    model = model_for(steering.model_id, from_args(ModelOptions, args))
    steering.check_model(model)
    settings = from_args(PolicySettings, args, base=steering.defaults)
    policy = make_policy(args.policy, **vars(replace(settings, caa=_caa(args))))
    threshold = settings.threshold
    labels, prompts = _prompt_texts(args, model)
    config = from_args(
        GenerationConfig,
        args,
        stop_strings=(QA_STOP,) if args.format == "qa" and args.prompt is None else (),
        prepend_bos=False if args.format == "chat" else None,
    )
    palette = color_palette(args.color, sys.stdout)
    for start in range(0, len(prompts), args.batch_size):
        batch = slice(start, start + args.batch_size)
        traces = generate(model, prompts[batch], policy=policy, steering=steering, config=config)
        for label, trace in zip(labels[batch], traces, strict=True):
            if args.json:
                print(json.dumps({"question": label, **trace.to_dict()}))
            else:
                _print_trace(label, trace, palette, threshold)
    return 0


PLAIN_VIEW_LIMIT = 240
"""The longest plain token view (characters) printed under an answer without colours."""


def color_palette(choice: str, stream: TextIO) -> str:
    """The colours of the token view: ``never`` none, ``always`` colour, ``auto`` colour
    when ``stream`` is a terminal and ``NO_COLOR`` is unset or empty. 24-bit colour when
    ``COLORTERM`` says the terminal has it, else 256 colours."""
    if choice == "never" or (choice == "auto" and (os.environ.get("NO_COLOR") or not _tty(stream))):
        return "none"
    return (
        "truecolor" if os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit") else "256"
    )


def _tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _print_trace(label: str, trace, palette: str, threshold: float) -> None:
    from fasb_lens.trace_view import legend_text, token_segments, tokens_text, trace_views

    print(f"Q: {label}")
    print(f"A: {trace.answer}")
    if trace.triggered:
        print(
            f"   [{trace.policy}] triggered at step {trace.trigger_step} "
            f"(p_true {trace.trigger_p_true:.2f}), strength {trace.strength:.2f}; "
            f"threw away {trace.discarded_text!r}"
        )
    else:
        readings = [p for p in trace.p_true if p is not None]
        low = f", lowest p_true {min(readings):.2f}" if readings else ""
        print(f"   [{trace.policy}] no trigger{low}")
    segments = token_segments(trace)
    if palette != "none":
        print("   " + tokens_text(segments, centre=threshold, color=palette))
        print("   " + legend_text(trace_views(trace), threshold=threshold, color=palette))
    elif trace.triggered:
        plain = tokens_text(segments)
        if len(plain) <= PLAIN_VIEW_LIMIT:
            print(f"   tokens: {plain}")
    print()
