"""The ``fasb-lens`` command line: thin commands over the library.

Each command is one module of :mod:`fasb_lens.commands` with an ``arguments(parser)``
and a ``run(args)`` function; this module lists them, builds only the parser of the
command being run (so ``fasb-lens --help`` imports nothing heavy), and is the one error
boundary: a problem with the user's input (a file, an artifact, an option, a model)
prints one line ``fasb-lens: error: ...`` and exits with status 2; ``-v`` shows the
traceback. Anything else is a bug and keeps its traceback.

``reproduce``, ``ablate`` and ``mc-datasets`` also run as several processes started by
``torchrun --nproc-per-node N --no-python fasb-lens COMMAND ...`` (:mod:`fasb_lens.distributed`):
each process joins the others here, only the first shows progress and prints results, and
an error in any process is reported as its one line, naming the process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import typing
from collections.abc import Sequence
from dataclasses import dataclass

PROG = "fasb-lens"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, one-line help, module and aliases; ``distributed``: it
    shares its work among the processes ``torchrun`` starts."""

    name: str
    help: str
    module: str
    aliases: tuple[str, ...] = ()
    distributed: bool = False


COMMANDS = (
    Command("download-model", "install the embedded default model", "download_model"),
    Command("demo", "the method on the default model, offline", "demo"),
    Command(
        "collect", "a dataset's probing and tuning prompts -> head activations on disk", "collect"
    ),
    Command("fit", "activations -> per-head probes, accuracy grid and steering artifact", "fit"),
    Command("generate", "answer questions under a steering policy", "generate"),
    Command(
        "reproduce",
        "the paper's TruthfulQA table: cross-validated, resumable",
        "reproduce",
        distributed=True,
    ),
    Command(
        "mc-datasets",
        "COPA, NLI, MMLU, SST-2, Winogrande (and Story Cloze) accuracy",
        "mc_datasets",
        aliases=("evaluate-mc",),
        distributed=True,
    ),
    Command("figures", "render every figure of a reproduce run", "figures"),
    Command("publish", "copy a finished run's results into results/", "publish"),
    Command("ablate", "per-head ablation (or steering) study", "ablate", distributed=True),
    Command("bench", "benchmarks, written as JSON", "bench"),
    Command(
        "gpu-check",
        "what only a GPU can show: half precision, split models, processes (a few minutes)",
        "gpu_check",
    ),
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line: ``fasb-lens: error: ...`` (status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        print(f"{PROG}: error: {where}{message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _command_module(command: Command):
    return importlib.import_module(f"fasb_lens.commands.{command.module}")


def _chosen(argv: Sequence[str]) -> Command | None:
    """The command named in ``argv`` (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            for command in COMMANDS:
                if word == command.name or word in command.aliases:
                    return command
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its options (all without
    ``argv``), so listing the commands stays fast."""
    chosen = _chosen(argv) if argv is not None else None
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log details; show tracebacks of errors"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, aliases=list(command.aliases), help=command.help, description=command.help
        )
        if argv is None or command == chosen:
            module = _command_module(command)
            module.arguments(sub)
            sub.set_defaults(handler=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a problem with the user's input, not a bug."""
    from fasb_lens.data import DataError
    from fasb_lens.models import EmbeddedModelMissingError, ModelUnavailableError
    from fasb_lens.storage import ArtifactError

    return (
        DataError,
        ArtifactError,
        EmbeddedModelMissingError,
        ModelUnavailableError,
        ValueError,
        OSError,
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text or type(error).__name__


def _no_library_progress_bars() -> None:
    """Silence the hub's and transformers' own bars (loading weights) with ``--no-progress``:
    the environment variable they read on import, and their switch if already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _join_processes(command: Command | None, args: argparse.Namespace) -> None:
    """Under ``torchrun``, join the other processes (one GPU, or ``--n-devices`` GPUs, each);
    a command that does not share its work is refused."""
    from fasb_lens import distributed

    if not distributed.launched():
        return
    if command is None or not command.distributed:
        sharing = ", ".join(c.name for c in COMMANDS if c.distributed)
        name = command.name if command else "this command"
        raise ValueError(f"`{name}` runs in one process; torchrun is for {sharing}")
    distributed.start(getattr(args, "n_devices", None) or 1)
    if not distributed.is_main() and hasattr(args, "no_progress"):
        args.no_progress = True  # progress bars in the first process only


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    from fasb_lens import distributed
    from fasb_lens.allocator import keep_freed_memory

    keep_freed_memory()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _join_processes(_chosen(argv), args)
        if getattr(args, "no_progress", False):
            _no_library_progress_bars()
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if distributed.is_main():
            _say(f"{PROG}: interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    except Exception as error:
        # several processes: the first to fail prints, naming itself (torchrun then stops
        # the others and adds its own summary of the processes it stopped)
        where = f"({distributed.describe()}) " if distributed.world_size() > 1 else ""
        report = distributed.reports_error()
        if not isinstance(error, _user_errors()):
            if report:
                traceback.print_exc()
                _say(
                    f"{PROG}: internal error {where}({type(error).__name__}); this is a bug, "
                    "please report it with the command and the traceback above"
                )
            return 1
        if args.verbose:
            traceback.print_exc()
        if report:
            _say(f"{PROG}: error: {where}{_one_line(error)}")
        return EXIT_USAGE
    finally:
        distributed.stop()


def _say(line: str) -> None:
    """One line on stderr in one write (processes started together do not interleave)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
