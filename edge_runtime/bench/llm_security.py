"""`edge-runtime bench llm --security curve,insecure`: secure and insecure side by side.

Why its own module: the LLM bench's rounds already interleave its variants; this only
multiplies each variant by the security modes asked for (its name gets the mode), so
the modes alternate round by round on the same machine, and prints each variant's
token time and TTFT with security on as a ratio to the same variant without it.
"curve" is the default secure setup: CURVE on every control socket, and the LLM
group's traffic sealed with an AEAD under keys agreed from the CURVE keys.
"""

from __future__ import annotations

import argparse
from typing import Any

MODES = ("curve", "insecure")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--security", default=None,
                        help="security modes side by side, e.g. curve,insecure (default: "
                        "curve, or insecure with --insecure); prints secure / insecure")


def modes(args: argparse.Namespace) -> list[str]:
    text = args.security or ("insecure" if args.insecure else "curve")
    out = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in out if m not in MODES]
    if bad or not out:
        raise SystemExit(f"--security: {bad or text!r}; use curve and/or insecure")
    return out


def expand(variants: list[Any], args: argparse.Namespace) -> tuple[list[Any], dict[str, bool]]:
    """Each variant once per mode (named "<variant> <mode>" when there are several), and
    whether each named variant runs insecure."""
    chosen = modes(args)
    if len(chosen) == 1:
        return variants, {v[0]: chosen[0] == "insecure" for v in variants}
    out, insecure = [], {}
    for variant in variants:
        for mode in chosen:
            name = f"{variant[0]} {mode}"
            out.append((name, *variant[1:]))
            insecure[name] = mode == "insecure"
    return out, insecure


def with_ratios(result: dict[str, Any], insecure: dict[str, bool]) -> dict[str, Any]:
    """Print and record each variant's per-token overhead (token time minus the slowest
    agent's compute) and secure ÷ insecure per variant (ms/token and TTFT)."""
    rows = result["variants"]
    ratios: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        if insecure.get(name) or not name.endswith(" curve"):
            continue
        base = name.removesuffix(" curve")
        plain = rows.get(f"{base} insecure")
        if plain is None:
            continue
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
    result["security"] = {"insecure": insecure, "ratios": ratios}
    return result


__all__ = ["MODES", "add_argument", "expand", "modes", "with_ratios"]
