"""The example systemd unit starts the agent with options the real CLI accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_runtime.cli.main import build_parser

UNIT = Path(__file__).parents[3] / "examples" / "systemd" / "edge-runtime-agent.service"


def _unit() -> configparser.ConfigParser:
    text = UNIT.read_text().replace("\\\n", " ")  # join systemd's continuation lines
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_execstart_parses_with_the_real_cli() -> None:
    unit = _unit()
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/edge-runtime")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent"
    assert args.log_level == "INFO"
    assert args.listen == "tcp://0.0.0.0:7700"
    assert not args.insecure  # a service must run with CURVE
    assert str(args.keys).startswith("/var/lib/edge-runtime")


def test_stop_and_restart_policy() -> None:
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_finds_only_the_missing_install(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=30
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and "/opt/edge-runtime/bin/edge-runtime" not in line
    ]
    assert problems == []
