"""`edge-runtime bench llm --security curve,insecure`: secure and insecure side by side.

Why its own module: the LLM bench's rounds already interleave its variants; this only
multiplies each variant by the security modes asked for (its name gets the mode), so
the modes alternate round by round on the same machine, and prints each variant's
token time and TTFT with security on as a ratio to the same variant without it.
"curve" is the default secure setup: CURVE on every control socket, and the LLM
group's traffic sealed with an AEAD under keys agreed from the CURVE keys. A mode with
"+tcp" or "+zmq" starts its agents with the group's links of that kind
(`agent.llm_group.LINKS_ENV`: plain TCP or ZeroMQ sockets) instead of their default, so
the two kinds of link are compared in one run. A mode with ":spinN" (e.g.
"curve:spin1000") starts its agents with the collectives' receive spin set to N µs
(`agent.llm_group.SPIN_ENV`) instead of the automatic choice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from edge_runtime.agent.llm_group import LINKS_ENV, SPIN_ENV

MODES = ("curve", "insecure", "curve+tcp", "insecure+tcp", "curve+zmq", "insecure+zmq")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--security", default=None,
                        help="security modes side by side, e.g. curve,insecure (default: "
                        "curve, or insecure with --insecure; +tcp: the group's plain TCP "
                        "links, e.g. curve,curve+tcp; :spinN: the receive spin in µs, e.g. "
                        "curve:spin1000); prints secure / insecure")


def modes(args: argparse.Namespace) -> list[str]:
    text = args.security or ("insecure" if args.insecure else "curve")
    out = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in out if m.partition(":")[0] not in MODES or not _spin_ok(m)]
    if bad or not out:
        raise SystemExit(f"--security: {bad or text!r}; use {', '.join(MODES)}")
    return out


def _spin_ok(mode: str) -> bool:
    _, colon, spin = mode.partition(":")
    return not colon or (spin.startswith("spin") and spin[4:].isdigit())


def expand(variants: list[Any], args: argparse.Namespace) -> tuple[list[Any], dict[str, str]]:
    """Each variant once per mode (named "<variant> <mode>" when there are several), and
    the mode each named variant runs in."""
    chosen = modes(args)
    if len(chosen) == 1:
        return variants, {v[0]: chosen[0] for v in variants}
    out, mode_of = [], {}
    for variant in variants:
        for mode in chosen:
            name = f"{variant[0]} {mode}"
            out.append((name, *variant[1:]))
            mode_of[name] = mode
    return out, mode_of


def insecure(mode: str) -> bool:
    """Whether agents of `mode` run without CURVE and sealing."""
    return mode.partition(":")[0].split("+")[0] == "insecure"


@contextlib.contextmanager
def group_links(mode: str) -> Iterator[None]:
    """The environment the agents of `mode` start with: the group's links named by its
    "+tcp" or "+zmq" and the spin of its ":spinN", the agents' defaults otherwise
    (restored afterwards)."""
    name, _, spin = mode.partition(":")
    _, _, links = name.partition("+")
    wanted = {LINKS_ENV: links or None, SPIN_ENV: spin[4:] or None}
    before = {key: os.environ.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            _set(key, value)
        yield
    finally:
        for key, value in before.items():
            _set(key, value)


def _set(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def with_ratios(result: dict[str, Any], mode_of: dict[str, str]) -> dict[str, Any]:
    """Print and record each variant's per-token overhead (token time minus the slowest
    agent's compute) and secure ÷ insecure per variant (ms/token and TTFT)."""
    rows = result["variants"]
    ratios: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        mode = mode_of.get(name, "")
        if not name.endswith(f" {mode}") or insecure(mode):
            continue
        base = name.removesuffix(f" {mode}")
        plain = rows.get(f"{base} {mode.replace('curve', 'insecure')}")
        if plain is None:
            continue
        base = f"{base} {mode}" if "+" in mode or ":" in mode else base
        ratios[base] = {"ms_per_token": row["ms_per_token"] / plain["ms_per_token"],
                        "ttft": row["ttft_s"] / plain["ttft_s"]}
    print("\nper-token overhead = ms/token − the slowest agent's compute per token:")
    for name, row in rows.items():
        compute = max(row["compute_s_per_token"].values(), default=0.0) * 1e3
        row["overhead_ms_per_token"] = row["ms_per_token"] - compute
        print(f"  {name:36} {row['ms_per_token']:7.1f} − {compute:6.1f} = "
              f"{row['overhead_ms_per_token']:6.1f} ms")
    if ratios:
        print("\nsecurity on ÷ off (same run, modes alternating):")
        for base, ratio in ratios.items():
            print(f"  {base:30} ms/token {ratio['ms_per_token']:.2f}x   "
                  f"TTFT {ratio['ttft']:.2f}x")
    result["security"] = {"modes": mode_of, "ratios": ratios}
    return result


__all__ = ["MODES", "add_argument", "expand", "modes", "with_ratios"]
