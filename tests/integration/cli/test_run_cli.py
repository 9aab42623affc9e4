"""`edge-runtime run` end to end as a subprocess: local clusters, a real agent via
--connect, outputs checked against plain onnxruntime on the whole model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_runtime.cli.main import main
from edge_runtime.cli.run import output_file_name, parse_exit_args, parse_input_args
from edge_runtime.errors import ConfigError

ROOT = Path(__file__).parents[3]
MODEL = ROOT / "examples" / "digits" / "digits_exits.onnx"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """One test image as .npy, and the whole model's outputs on it in plain onnxruntime."""
    with np.load(ROOT / "examples" / "digits" / "test_split.npz", allow_pickle=False) as data:
        x = data["images"][3:4]
    path = tmp_path_factory.mktemp("inputs") / "image.npy"
    np.save(path, x)
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return path, dict(zip(names, session.run(None, {"image": x}), strict=True))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_pipeline_on_three_emulated_devices_matches_onnxruntime(
    image: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, want = image
    out = _run(
        "run", str(MODEL), "--local", "3", "--presets", "raspberry-pi-4,jetson-orin-nano,phone",
        "--strategy", "pipeline", "--input", f"image={path}", "--repeat", "3",
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    devices = set(re.findall(r"stage \d+: (\S+),", out.stdout))
    assert len(devices) >= 2, out.stdout  # really split across agents
    assert "answered by: final ×3" in out.stdout
    assert "latency over 3 run(s): p50" in out.stdout
    for name, expected in want.items():
        got = np.load(tmp_path / "out" / f"{name}.npy", allow_pickle=False)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        argmax = int(expected.argmax())
        assert re.search(rf"{name}\s+float32\[1, 10\]\s+argmax {argmax}\b", out.stdout)


def test_exit_threshold_makes_the_early_exit_answer(
    image: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, want = image
    # Threshold 0 always fires: exit1 must answer every request, with exit1's logits.
    out = _run("run", str(MODEL), "--input", f"image={path}", "--exit", "exit1=0",
               "--repeat", "2", "--output", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "answered by: exit1 ×2" in out.stdout
    np.testing.assert_allclose(np.load(tmp_path / "exit1.npy"), want["exit1"], rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "final.npy").exists()


def test_connect_to_a_running_agent_then_sigterm_stops_it_cleanly(
    image: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, want = image
    ready = tmp_path / "ready.json"
    agent = subprocess.Popen(
        [*CLI, "--log-level", "INFO", "agent", "--listen", "tcp://127.0.0.1:0", "--insecure",
         "--cache-dir", str(tmp_path / "cache"), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "agent did not start"
        address = json.loads(ready.read_text())["address"]
        out = _run("run", str(MODEL), "--connect", address, "--insecure",
                   "--input", f"image={path}", "--output", str(tmp_path / "out"))  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"connecting to 1 agent(s): {address}" in out.stdout
        np.testing.assert_allclose(
            np.load(tmp_path / "out" / "final.npy"), want["final"], rtol=1e-4, atol=1e-4
        )
        assert agent.poll() is None, "the agent must keep serving after a client leaves"
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=15)
        assert code == 0
        assert "Traceback" not in (agent.stderr.read() if agent.stderr else "")
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()


def test_argument_errors_are_clear_and_start_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        (["--input", "image"], "write NAME=FILE.npy"),
        (["--input", f"image={tmp_path / 'none.npy'}"], "no file"),
        (["--input", f"image={objects}"], "cannot be read without pickle"),
        (["--input", f"image={objects}", "--local", "2", "--presets", "phone"], "1 presets"),
        (["--input", f"image={objects}", "--repeat", "0"], "--repeat must be at least 1"),
        (["--input", f"image={objects}", "--exit", "exit1=2"], "0 <= THRESHOLD <= 1"),
    ]
    for extra, message in cases:
        # In-process through the real entry point: these fail before any agent starts.
        assert main(["run", str(MODEL), *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)


def test_wrong_input_name_is_an_input_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    out = _run("run", str(MODEL), "--input", f"pixels={tmp_path / 'x.npy'}", timeout=60)
    assert out.returncode == 1
    assert "missing ['image']" in out.stderr and "unexpected ['pixels']" in out.stderr
    assert "Traceback" not in out.stderr


def test_parsers() -> None:
    assert parse_input_args(["a=x.npy", " b = y.npy "]) == {"a": Path("x.npy"), "b": Path("y.npy")}
    with pytest.raises(ConfigError, match="given twice"):
        parse_input_args(["a=x.npy", "a=y.npy"])
    assert parse_exit_args([]) is None
    assert parse_exit_args(["exit1=0.9", "exit2=1"]) == {"exit1": 0.9, "exit2": 1.0}
    with pytest.raises(ConfigError):
        parse_exit_args(["exit1=high"])
    assert output_file_name("logits/0:1") == "logits_0_1.npy"
    assert output_file_name("..") == "output.npy"
