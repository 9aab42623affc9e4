"""The `edge-runtime` command: one sub-command per module in this package.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`.
Sub-command modules import only argparse at module level and keep their heavy
imports (onnx, onnxruntime, the agent) inside `run`, so `--help` and `profile`
start fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence

from edge_runtime.errors import is_user_error

# name -> (module, one-line help). The order is the order `--help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("edge_runtime.cli.demo", "run the demo on a local cluster of emulated devices"),
    "profile": ("edge_runtime.cli.profile", "measure this device (or show a preset)"),
    "agent": ("edge_runtime.cli.agent", "run the agent daemon of this device"),
    "plan": ("edge_runtime.cli.plan", "plan how to split an ONNX model across devices"),
    "run": ("edge_runtime.cli.run", "run an ONNX model on a cluster"),
    "generate": ("edge_runtime.cli.generate", "generate text with an LLM across agents"),
    "serve": ("edge_runtime.cli.serve", "serve an LLM over an OpenAI-compatible HTTP API"),
    "bench": ("edge_runtime.cli.bench", "run a benchmark suite and write its JSON"),
    "status": ("edge_runtime.cli.status", "show the agents: health, memory, deployments"),
    "dashboard": ("edge_runtime.cli.dashboard", "serve the live dashboard over agents"),
    "trace": ("edge_runtime.cli.trace", "summarise a trace file and draw its timeline"),
    "keys": ("edge_runtime.cli.keys", "create, show and trust CURVE keys"),
}

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Run one model across a handful of edge devices.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity on stderr (default: WARNING)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # a command whose module is not part of this build
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
    return parser


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit status when stdout's reader went away: what a command killed by SIGPIPE
reports (141), as `yes | head` does, without a traceback."""


def _stdout_closed() -> bool:
    """True if stdout is a pipe whose reader has gone (poll flags POLLERR on it)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by an object without a descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still
    buffered cannot raise BrokenPipeError again at exit (Python's documented recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        code: int = module.run(args)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of the command's own (e.g. to a child process), not stdout
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a user-facing error ends the command, not a traceback
        if not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
