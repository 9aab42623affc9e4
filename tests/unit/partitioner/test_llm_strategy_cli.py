"""`edge-runtime plan --llm` end to end (in-process): every strategy predicted, the
choice and why printed, the layout written as JSON; links by name; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.cli.main import main
from partitioner.llm_cost import parse_link
from partitioner.llm_layout import LlmLayout

# Llama-3-8B's published config (meta-llama/Meta-Llama-3-8B, config.json)
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
}


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "llama3-8b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA3_8B))
    return path


def test_plan_llm_prints_every_strategy_and_writes_the_layout(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    code = main(["plan", "--llm", str(config.parent), "--devices", "raspberry-pi-5x8",
                 "--link", "ethernet", "--streams", "8", "--out", str(out_dir)])
    assert code == 0
    out = capsys.readouterr().out
    for strategy in ("single", "tensor", "pipeline", "hybrid"):
        assert f"\n{strategy} " in out
    assert "<- chosen" in out and "chosen: tensor — best latency: tensor" in out
    layout = LlmLayout.from_json((out_dir / "llm_plan.json").read_text())
    assert layout.strategy == "tensor" and len(layout.devices) == 8
    assert [p.strategy for p in layout.predictions] == ["single", "tensor", "pipeline",
                                                        "hybrid"]
    by = {p.strategy: p for p in layout.predictions}
    # 30 GB of fp32 weights: one Pi streams them from its SD card, eight hold them
    assert by["single"].s_per_token > 100 * by["tensor"].s_per_token


def test_the_throughput_objective_takes_the_most_tokens_per_s(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """8 Pis on Wi-Fi: fp32 Llama-3-8B fits in RAM only spread over all of them, so
    the stages a pipeline can use stream from SD cards; the choice is the strategy of
    the most tokens/s in the printed table."""
    code = main(["plan", "--llm", str(config), "--devices", "raspberry-pi-5x8", "--link",
                 "wifi", "--objective", "throughput", "--streams", "8"])
    assert code == 0
    out = capsys.readouterr().out
    chosen = out.rsplit("chosen: ", 1)[1].split(" ", 1)[0]
    rates = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()
             if line.split()[:1] and line.split()[0] in ("single", "tensor", "pipeline",
                                                         "hybrid")}
    assert set(rates) == {"single", "tensor", "pipeline", "hybrid"}
    assert rates[chosen] == max(rates.values())
    assert "best throughput" in out


def test_links_by_name_or_figures_and_errors(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_link("wifi") == (0.005, 50e6 / 8)
    assert parse_link("1:100") == (0.001, 100e6 / 8)
    with pytest.raises(ValueError, match="RTT_MS:MBIT"):
        parse_link("fast")
    assert main(["plan", "--llm", str(config), "--devices", "raspberry-pi-5", "--link",
                 "x"]) != 0
    assert "--link: link 'x'" in capsys.readouterr().err
    assert main(["plan", "--devices", "raspberry-pi-5"]) != 0
    assert "or --llm CHECKPOINT" in capsys.readouterr().err
