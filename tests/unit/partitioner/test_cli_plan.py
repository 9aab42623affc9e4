"""`edge-runtime plan` end to end (in-process): table, plan.json, shards, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli.main import main
from partitioner import Plan, verify_shard
from support import onnx_models as om

MODEL = str(om.DIGITS_MODEL)
CALIBRATION = str(om.DIGITS_MODEL.parent / "calibration.npz")


def test_plan_prints_table_and_writes_plan_and_shards(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "plan",
            MODEL,
            "--devices",
            "pi4,jetson-orin-nano,phone",
            "--objective",
            "throughput",
            "--calibration",
            CALIBRATION,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "compute ms" in out and "memory MB" in out and "exit1" in out
    assert "calibration curve" in out and "<- chosen" in out
    plan = Plan.load(tmp_path, model_path=MODEL)
    assert plan.objective == "throughput"
    for stage in plan.stages:
        verify_shard(tmp_path / stage.shard_file, stage.shard_sha256)
    assert plan.exits[0].threshold is not None and plan.expected_latency_s is not None
    data = np.load(om.DIGITS_MODEL.parent / "test_split.npz")
    feeds = {"image": data["images"][:16]}
    chained = om.chain_shards(tmp_path, plan, feeds)
    np.testing.assert_allclose(
        chained["final"], om.run_model(MODEL, feeds)["final"], rtol=1e-4, atol=1e-5
    )


def test_plan_with_slo_and_duplicate_presets(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "plan",
            MODEL,
            "--devices",
            "pi4,pi4",
            "--slo-ms",
            "50",
            "--calibration",
            CALIBRATION,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["devices"] == ["raspberry-pi-4", "raspberry-pi-4#2"]
    assert data["extra"]["slo_s"] == 0.05
    assert data["expected_latency_s"] <= 0.05


def test_profiles_json_and_memory_budget(tmp_path: Path) -> None:
    from devices import LinkProfile, presets

    pi, phone = presets.get("pi4"), presets.get("phone")
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps(
            {
                "devices": [pi.to_dict(), phone.to_dict()],
                "links": [LinkProfile(pi.name, phone.name, 0.001, 1e8).to_dict()],
            }
        )
    )
    code = main(
        [
            "plan",
            MODEL,
            "--devices",
            str(profiles),
            "--memory-budget",
            "1.5MB",
            "--no-exits",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    plan = Plan.load(tmp_path / "out")
    assert len({s.device for s in plan.stages}) == 2 and not plan.exits


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--devices", "pi4", "--memory-budget", "1KB"], "needs about"),
        (["--devices", "toaster"], "toaster"),
        (["--devices", "pi4", "--slo-ms", "5"], "--calibration"),
        (["--devices", "pi4", "--memory-budget", "lots"], "cannot read size 'lots'"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert main(["plan", MODEL, *argv, "--out", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_not_an_onnx_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["plan", str(bad), "--devices", "pi4", "--out", str(tmp_path / "o")]) == 1
    assert "not an ONNX model" in capsys.readouterr().err


def test_single_profile_json_as_profile_prints_it(tmp_path: Path) -> None:
    from devices import presets

    one = tmp_path / "me.json"
    one.write_text(presets.get("laptop").to_json())
    assert main(["plan", MODEL, "--devices", str(one), "--out", str(tmp_path / "out")]) == 0
    assert Plan.load(tmp_path / "out").devices == ("laptop",)
