"""`edge-runtime bench llm --decode agents,steps`: the decode loop on the agents, and
step by step from the coordinator, side by side on the same deployment.

Why its own module: the LLM bench deploys each variant once per round; this runs one
generation per decode mode on that deployment (the order alternating round by round),
names the rows ("<variant> · steps" for the coordinator's loop), and prints the token
time of a run on the agents as a ratio to the same deployment stepped token by token.
"""

from __future__ import annotations

import argparse
from typing import Any

MODES = ("agents", "steps")
STEPS_SUFFIX = " · steps"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decode", default="agents",
                        help="decode modes side by side on each deployment: agents (a "
                        "decode run on the agents, the default) and/or steps (one request "
                        "per token from the coordinator); prints agents / steps")


def modes(args: argparse.Namespace) -> list[str]:
    out = list(dict.fromkeys(m.strip() for m in str(args.decode).split(",") if m.strip()))
    bad = [m for m in out if m not in MODES]
    if bad or not out:
        raise SystemExit(f"--decode: {bad or args.decode!r}; use agents and/or steps")
    return out


def row_name(variant: str, mode: str) -> str:
    """The report row of `variant` decoded in `mode`."""
    return variant + (STEPS_SUFFIX if mode == "steps" else "")


def expand(variants: list[Any], chosen: list[str]) -> list[Any]:
    """The report's rows: each deployed variant once per decode mode."""
    return [(row_name(v[0], mode), *v[1:]) for v in variants for mode in chosen]


def in_round(chosen: list[str], rnd: int) -> list[str]:
    """The modes in the order round `rnd` runs them (alternating, so neither always
    runs on a warmer deployment)."""
    return chosen if rnd % 2 == 0 else chosen[::-1]


def with_ratios(result: dict[str, Any], chosen: list[str]) -> dict[str, Any]:
    """Print and record agents ÷ steps ms/token per deployed variant."""
    if len(chosen) < 2:
        return result
    rows = result["variants"]
    ratios = {name: row["ms_per_token"] / rows[name + STEPS_SUFFIX]["ms_per_token"]
              for name, row in rows.items()
              if not name.endswith(STEPS_SUFFIX) and name + STEPS_SUFFIX in rows}
    print("\ndecode on the agents ÷ step by step from the coordinator (same deployment):")
    for name, ratio in ratios.items():
        print(f"  {name:36} ms/token {ratio:.2f}x")
    result["decode"] = {"modes": chosen, "ratios": ratios}
    return result


__all__ = ["MODES", "add_argument", "expand", "in_round", "modes", "row_name", "with_ratios"]
