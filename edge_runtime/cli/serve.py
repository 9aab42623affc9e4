"""`edge-runtime serve CHECKPOINT`: an OpenAI-compatible API over an LLM split across agents.

    edge-runtime serve examples/tinylm/checkpoint --local 2
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "checkpoint", "prompt": "Permission is hereby granted", "max_tokens": 20}'

Deploys the checkpoint as `generate` does (`--local N` agents on this machine, or
`--connect ADDR,... --keys DIR` to real ones), puts one `GenerationScheduler` in
front of it and serves `/v1/models`, `/v1/completions` and `/v1/chat/completions` on
127.0.0.1:8000 until SIGTERM or Ctrl-C, then drains, unloads and tears down. With
`--api-key` (or EDGE_RUNTIME_API_KEY, which keeps the key out of `ps`), requests
without `Authorization: Bearer <key>` get 401. The model's name in requests is the
checkpoint directory's name unless `--model-name` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from edge_runtime.cli.cluster_args import add_cluster_arguments, open_cluster
from edge_runtime.cli.trace import add_trace_argument, tracing_for, write_capture

log = logging.getLogger(__name__)

API_KEY_ENV = "EDGE_RUNTIME_API_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # defaults of the scheduler and the server are resolved in `run` (None here): this
    # runs for every command's --help, which must not import them
    parser.add_argument("checkpoint", type=Path,
                        help="Hugging Face checkpoint directory (Llama, Mistral, Qwen2) "
                        "or a llama.cpp .gguf file")
    add_cluster_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; "
                        "none = no check)")
    parser.add_argument("--model-name", default=None,
                        help="the model name clients send (default: the checkpoint "
                        "directory's name)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="requests waiting beyond the running one before 429 "
                        "(default: the scheduler's, 64)")
    parser.add_argument("--strategy", default="tensor",
                        choices=["tensor", "pipeline", "hybrid", "single", "auto"],
                        help="how to split the model (default tensor; auto: the best predicted "
                        "from the agents' profiles and measured links, see `plan --llm`)")
    parser.add_argument("--max-batch", type=int, default=1,
                        help="sequences decoded together per step (continuous batching; a KV "
                        "cache slot each on every agent), default 1")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="also serve Prometheus metrics at http://HOST:PORT/metrics "
                        "without the API key (the API's own /metrics needs it); "
                        "default none")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address --metrics-port binds (default 127.0.0.1)")
    parser.add_argument("--drain-s", type=float, default=None,
                        help="on SIGTERM, seconds answers in flight may take to finish "
                        "before they are cancelled (default: the server's, 30)")
    add_trace_argument(parser)  # every step while serving; written when the server stops


def _check(args: argparse.Namespace) -> None:
    from edge_runtime.errors import ConfigError
    from edge_runtime.llm.gguf import resolve_checkpoint, stderr_progress

    # a .gguf: its converted directory (converted once, then cached)
    args.checkpoint = resolve_checkpoint(args.checkpoint, progress=stderr_progress)
    if not args.checkpoint.is_dir():
        raise ConfigError(f"no checkpoint directory at {args.checkpoint}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.max_queue is not None and args.max_queue < 1:
        raise ConfigError(f"--max-queue must be at least 1, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.drain_s is not None and args.drain_s < 0:
        raise ConfigError(f"--drain-s must be >= 0, got {args.drain_s}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: the local agents are stopped on the way


def run(args: argparse.Namespace) -> int:
    # SIGTERM before the server runs (while deploying) stops like Ctrl-C; while it
    # runs, `serve_deployment` turns it into a graceful shutdown
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from edge_runtime.cli.progress_line import ProgressLine
    from edge_runtime.metrics import ClusterMonitor, start_exporter
    from edge_runtime.metrics.exporter import check_port
    from edge_runtime.sdk.scheduler import DEFAULT_MAX_QUEUE, GenerationScheduler
    from edge_runtime.serve import ServedModel, bind, create_app, serve_deployment, url_of
    from edge_runtime.serve.server import DEFAULT_DRAIN_S

    _check(args)
    if args.metrics_port is not None:
        check_port(args.metrics_port)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    sock = bind(args.host, args.port)  # a port in use fails now, not after the deploy
    if api_key is None and args.host not in LOOPBACK:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach "
              f"this port can use the model (set {API_KEY_ENV})", file=sys.stderr)
    try:
        with open_cluster(args) as cluster:
            llm = cluster.deploy_llm(args.checkpoint, args.strategy, progress=ProgressLine(),
                                     memory_budget=args.memory_budget,
                                     max_context=args.max_context, quantize=args.quantize,
                                     max_batch=args.max_batch, sync=args.sync)
            try:
                print(llm.describe(), file=sys.stderr)
                model = ServedModel.of(llm, args.model_name)  # before the scheduler owns it
                scheduler = GenerationScheduler(
                    llm, max_queue=args.max_queue or DEFAULT_MAX_QUEUE).start()
                monitor = ClusterMonitor.of_cluster(cluster)
                app = create_app(scheduler, model, api_key=api_key, monitor=monitor)
                exporter = (None if args.metrics_port is None else start_exporter(
                    app.state.metrics_registry, args.metrics_port, args.metrics_host))
                print(f"chat template: {model.chat_template.origin}", file=sys.stderr)
                print(f"dashboard at {url_of(sock)}/dashboard"
                      + ("#key=<your API key>" if api_key else "")
                      + (f"; metrics at {exporter.url}" if exporter else ""), file=sys.stderr)
                print(f"serving {model.name} at {url_of(sock)}/v1 (SIGTERM or Ctrl-C stops)",
                      flush=True)
                capture = None
                try:
                    with tracing_for(llm, args.trace) as capture:
                        serve_deployment(app, sock, scheduler, llm, drain_s=DEFAULT_DRAIN_S
                                         if args.drain_s is None else args.drain_s)
                finally:
                    if exporter is not None:
                        exporter.close()
                    monitor.close()
                    write_capture(capture, args.trace)  # before the agents go
            finally:
                llm.unload()
    finally:
        sock.close()
    print("stopped", file=sys.stderr)
    return 0
