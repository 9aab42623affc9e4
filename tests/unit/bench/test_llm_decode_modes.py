"""`bench llm --decode agents,steps`: rows per decode mode, alternating order, ratios."""

from __future__ import annotations

import argparse

import pytest

from edge_runtime.bench import llm_decode_modes as modes


def _args(text: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    modes.add_argument(parser)
    return parser.parse_args(["--decode", text])


def test_modes_are_checked_and_deduplicated() -> None:
    assert modes.modes(_args("agents,steps,agents")) == ["agents", "steps"]
    assert modes.modes(_args("agents")) == ["agents"]
    with pytest.raises(SystemExit, match="use agents and/or steps"):
        modes.modes(_args("coordinator"))


def test_each_deployed_variant_gets_one_row_per_mode_and_the_order_alternates() -> None:
    variants = [("4 agent(s) resident q4 curve", 4, False, "q4")]
    rows = modes.expand(variants, ["agents", "steps"])
    assert [r[0] for r in rows] == ["4 agent(s) resident q4 curve",
                                    "4 agent(s) resident q4 curve · steps"]
    assert all(r[1:] == (4, False, "q4") for r in rows)
    assert modes.in_round(["agents", "steps"], 0) == ["agents", "steps"]
    assert modes.in_round(["agents", "steps"], 1) == ["steps", "agents"]


def test_the_ratio_pairs_a_run_with_its_own_deployment_stepped() -> None:
    report = {"variants": {"2 agents": {"ms_per_token": 9.0},
                           "2 agents · steps": {"ms_per_token": 12.0},
                           "4 agents": {"ms_per_token": 5.0}}}
    out = modes.with_ratios(report, ["agents", "steps"])
    assert out["decode"]["ratios"] == {"2 agents": pytest.approx(0.75)}
    assert "decode" not in modes.with_ratios({"variants": {}}, ["agents"])
