"""Demo steps with the multi-exit digits CNN: plan, calibrate, classify, compare.

Only the public SDK (`Cluster.plan`/`deploy`, `Deployment.run`/`run_many`, `Result`) and
the partitioner's public exit calibration are used, so these steps double as an
example. Latency is measured side by side: each test image goes to the 3-device
pipeline and to the single-device baseline in turn, so the noise of a shared
machine hits both the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from edge_runtime.demo.assets import (
    CALIBRATION_FILE,
    MODEL_FILE,
    TEST_FILE,
    Split,
    find_assets,
    load_split,
)
from edge_runtime.demo.render import Column, fmt_bytes, fmt_ms, fmt_pct
from edge_runtime.demo.stats import LatencyStats, accuracy, exit_counts, exit_name, throughput
from edge_runtime.demo.steps import DemoContext

log = logging.getLogger(__name__)

IN_FLIGHT = 8
"""Requests `run_many` keeps in the pipeline in the throughput step (the SDK's default)."""

TOLERANCE = 0.005
"""Exit calibration may lose at most this much accuracy (vs the final exit) on the
held-out calibration split: half a point, so the test accuracy stays near the
final exit's while most images stop early."""


def _feeds(split: Split) -> Iterator[dict[str, np.ndarray]]:
    for index in range(len(split)):
        yield {"image": split.images[index : index + 1]}


def exit_outputs(plan: Any) -> dict[str, str]:
    """Exit name -> output tensor name, with `final` for a run to the last stage."""
    outputs = {spec.name: spec.output for spec in plan.exits}
    finals = [spec.output for spec in plan.exits if spec.final]
    outputs["final"] = finals[0] if finals else plan.model_outputs[-1].name
    return outputs


def predicted_class(result: Any, plan: Any) -> int:
    """The class the answering exit predicts (argmax of its logits)."""
    output = exit_outputs(plan)[exit_name(result.exit)]
    return int(np.argmax(np.asarray(result.outputs[output]).reshape(-1)))


def _test_split(ctx: DemoContext) -> Split:
    return load_split(find_assets(ctx.options.assets) / TEST_FILE).head(ctx.options.limit)


def per_device_means(results: list[Any]) -> dict[str, dict[str, float]]:
    """Per agent: images it worked on, and its mean compute and receive time per image."""
    totals: dict[str, dict[str, float]] = {}
    for result in results:
        for agent, row in result.per_device().items():
            entry = totals.setdefault(agent, {"images": 0.0, "compute_s": 0.0, "transfer_s": 0.0})
            entry["images"] += 1
            entry["compute_s"] += row["compute_s"]
            entry["transfer_s"] += row["transfer_s"]
    return {
        agent: {"images": row["images"], "compute_s": row["compute_s"] / row["images"],
                "transfer_s": row["transfer_s"] / row["images"]}
        for agent, row in totals.items()
    }  # fmt: skip


class PlanAndDeploy:
    title = "Plan, calibrate early exits, deploy"

    def run(self, ctx: DemoContext) -> None:
        from partitioner.exits import apply_calibration, calibrate_exits, exit_latencies

        console = ctx.console
        assets = find_assets(ctx.options.assets)
        with console.progress(f"planning {MODEL_FILE} over the devices") as line:
            draft = ctx.cluster.plan(assets / MODEL_FILE, strategy=ctx.options.strategy)
            used = dict.fromkeys(s.device for s in draft.stages)
            line.done(f"planned {len(draft.stages)} stages on {len(used)} devices")
        with console.progress("deploying the baseline") as line:
            # The baseline: the whole model on the device predicted fastest, no exits.
            single = ctx.cluster.deploy(assets / MODEL_FILE, strategy="single", exits=[])
            ctx.exit_stack.callback(single.unload)
            device = single.plan.stages[0].device
            line.done(f"baseline for comparison: the whole model on {device} alone, no exits")
        calibration = load_split(assets / CALIBRATION_FILE)
        with console.progress(f"calibrating exits on {len(calibration)} held-out images") as line:
            # One batched request to the baseline returns every exit head's logits;
            # the search scores thresholds by the pipeline plan's predicted timings.
            outputs = single.run({"image": calibration.images}).outputs
            logits = [outputs[spec.output] for spec in draft.exits]
            chosen = calibrate_exits(
                logits, calibration.labels, exit_latencies(draft), tolerance=TOLERANCE
            )
            plan = apply_calibration(draft, chosen)
            thresholds = {s.name: float(s.threshold) for s in plan.exits if s.threshold is not None}
            line.done(
                "calibrated exit thresholds: "
                + ", ".join(f"{name} p ≥ {t:.2f}" for name, t in thresholds.items())
            )
        with console.progress("deploying the calibrated plan") as line:

            def progress(agent: str, done: int, total: int) -> None:
                line.update(f"sending a shard to {agent}: {fmt_bytes(done)} / {fmt_bytes(total)}")

            model = ctx.cluster.deploy(assets / MODEL_FILE, plan=plan, progress=progress)
            ctx.exit_stack.callback(model.unload)
            line.done(f"deployed the calibrated plan ({fmt_bytes(model.bytes_sent)} sent)")
        self._show_plan(ctx, model.plan, thresholds)
        ctx.state.update(deployment=model, single=single)
        ctx.results["plan"] = {
            "strategy": plan.strategy,
            "stages": [
                {"index": s.index, "device": s.device, "nodes": [s.node_start, s.node_end],
                 "exit": s.exit, "flops": s.flops}
                for s in plan.stages
            ],
            "thresholds": thresholds,
            "policy": chosen.policy,
            "exit_outputs": exit_outputs(plan),
            "calibration_accuracy": chosen.chosen.accuracy,
            "predicted_latency_ms": plan.predicted_latency_s * 1e3,
            "expected_latency_ms": (plan.expected_latency_s or 0.0) * 1e3,
            "baseline_device": device,
        }  # fmt: skip

    @staticmethod
    def _show_plan(ctx: DemoContext, plan: Any, thresholds: dict[str, float]) -> None:
        console = ctx.console
        total_flops = sum(s.flops for s in plan.stages) or 1.0
        rows = []
        for stage in plan.stages:
            exit_text = ""
            if stage.exit:
                threshold = thresholds.get(stage.exit)
                condition = "always" if threshold is None else f"p ≥ {threshold:.2f}"
                exit_text = f"{stage.exit} ({condition})"
            share = stage.flops / total_flops
            rows.append(
                [
                    str(stage.index),
                    stage.device,
                    f"{stage.node_start}–{stage.node_end - 1}",
                    f"{share:.1%}",
                    fmt_bytes(stage.memory_bytes),
                    exit_text,
                    fmt_ms(stage.predicted_compute_s + stage.predicted_transfer_s),
                ]
            )
        console.table(
            [
                Column("#", ">"),
                Column("device"),
                Column("nodes"),
                Column("FLOPs", ">"),
                Column("memory", ">"),
                Column("exit"),
                Column("predicted", ">"),
            ],
            rows,
        )
        expected = plan.expected_latency_s
        console.note(
            f"predicted {fmt_ms(plan.predicted_latency_s)} per image to the last exit"
            + (f", {fmt_ms(expected)} on average with early exits" if expected else "")
        )


class ClassifyTestSplit:
    title = "Classify the test split"

    def run(self, ctx: DemoContext) -> None:
        console = ctx.console
        model, single = ctx.state["deployment"], ctx.state["single"]
        split = _test_split(ctx)
        device = single.plan.stages[0].device
        # Latency side by side on every `stride`-th image: the pipeline, then the baseline.
        stride = max(1, -(-len(split) // max(1, ctx.options.baseline_limit)))
        piped, alone = [], []
        with console.progress(f"classifying {len(split)} images, one at a time") as line:
            for index, feeds in enumerate(_feeds(split)):
                piped.append(model.run(feeds))
                if index % stride == 0:
                    alone.append(single.run(feeds))
                if index % 20 == 0:
                    line.update(f"classifying: {index + 1} / {len(split)}")
            # The baseline's accuracy: one batched request over the whole split.
            final = single.run({"image": split.images}).outputs[exit_outputs(single.plan)["final"]]
            line.done(f"classified {len(split)} images; {len(alone)} also on {device} alone")
        predictions = np.array([predicted_class(r, model.plan) for r in piped])
        baseline = np.asarray(final).argmax(axis=1)
        correct = predictions == split.labels
        acc, base_acc = accuracy(predictions, split.labels), accuracy(baseline, split.labels)
        order = [spec.name for spec in model.plan.exits if not spec.final] + ["final"]
        counts = exit_counts((r.exit for r in piped), order)
        rows = []
        for name, count in counts.items():
            mask = np.array([exit_name(r.exit) == name for r in piped])
            exit_acc = fmt_pct(float(correct[mask].mean())) if count else "—"
            share = count / len(piped)
            rows.append([name, str(count), console.bar(share, 20), fmt_pct(share), exit_acc])
        console.table(
            [
                Column("answered by"),
                Column("images", ">"),
                Column(""),
                Column("share", ">"),
                Column("accuracy", ">"),
            ],
            rows,
        )
        n_correct, n_base = int(correct.sum()), int((baseline == split.labels).sum())
        console.item(
            console.style(
                f"accuracy with early exits: {fmt_pct(acc)} ({n_correct}/{len(split)})", "bold"
            )
        )
        baseline_text = f"{fmt_pct(base_acc)} ({n_base}/{len(split)}) on {device} alone"
        console.item(f"always to the last exit:   {baseline_text}")
        ctx.state.update(
            per_device=per_device_means(piped),
            pipeline_latency=LatencyStats.of([r.latency_s for r in piped]),
            paired_latency=LatencyStats.of([r.latency_s for r in piped[::stride]]),
            single_latency=LatencyStats.of([r.latency_s for r in alone]),
        )
        ctx.results["classify"] = {
            "images": len(split),
            "correct": n_correct,
            "accuracy": acc,
            "baseline_correct": n_base,
            "baseline_accuracy": base_acc,
            "exits": counts,
        }
        early = sum(c for n, c in counts.items() if n != "final")
        ctx.summary.append(
            ("accuracy", f"{fmt_pct(acc)} on {len(split)} test images "
                         f"({fmt_pct(base_acc)} without exits)")
        )  # fmt: skip
        ctx.summary.append(("early exits", f"{early} of {len(split)} images stopped early"))


def _row(label: str, stats: LatencyStats) -> list[str]:
    return [label, *(fmt_ms(v) for v in (stats.p50_s, stats.p90_s, stats.p99_s, stats.mean_s))]


class CompareLatency:
    title = "Latency: three devices vs one"

    def run(self, ctx: DemoContext) -> None:
        console = ctx.console
        piped: LatencyStats = ctx.state["paired_latency"]
        alone: LatencyStats = ctx.state["single_latency"]
        device = ctx.state["single"].plan.stages[0].device
        pairs = zip(
            (piped.p50_s, piped.p90_s, piped.p99_s, piped.mean_s),
            (alone.p50_s, alone.p90_s, alone.p99_s, alone.mean_s),
            strict=True,
        )
        console.table(
            [
                Column("per image"),
                Column("p50", ">"),
                Column("p90", ">"),
                Column("p99", ">"),
                Column("mean", ">"),
            ],
            [
                _row("3 devices, early exits", piped),
                _row(f"{device} alone", alone),
                ["ratio", *(f"{a / b:.2f}×" for a, b in pairs)],
            ],
        )
        console.note(f"measured side by side on {alone.count} images: each went to both in turn.")
        console.note("All agents share this machine's CPU cores; on real devices each stage")
        console.note("has its own, so a split gains more there than it can here.")
        per_device: dict[str, dict[str, float]] = ctx.state["per_device"]
        console.write()
        console.table(
            [
                Column("where the time went"),
                Column("images", ">"),
                Column("compute", ">"),
                Column("receiving", ">"),
            ],
            [
                [agent, f"{row['images']:.0f}", fmt_ms(row["compute_s"]), fmt_ms(row["transfer_s"])]
                for agent, row in per_device.items()
            ],
        )
        console.note("per image a device worked on, as the agents measured it (compute is")
        console.note("slowed down to the emulated device's speed)")
        ctx.results["per_device"] = per_device
        ctx.results["latency"] = {"pipeline": piped.to_dict(), "single": alone.to_dict()}
        ctx.summary.append(
            ("latency", f"p50 {fmt_ms(piped.p50_s)} on 3 devices with early exits, "
                        f"{fmt_ms(alone.p50_s)} on one")
        )  # fmt: skip


class Throughput:
    title = "Throughput with run_many"

    def run(self, ctx: DemoContext) -> None:
        console = ctx.console
        model, single = ctx.state["deployment"], ctx.state["single"]
        device = single.plan.stages[0].device
        split = _test_split(ctx)
        rates: list[tuple[str, float]] = [
            ("3 devices, run (one at a time)", 1.0 / ctx.state["pipeline_latency"].mean_s)
        ]
        with console.progress(f"streaming {len(split)} images through each") as line:
            for label, deployment in (
                (f"3 devices, run_many ({IN_FLIGHT} in flight)", model),
                (f"{device} alone, run_many", single),
            ):
                started = time.perf_counter()
                count = sum(1 for _ in deployment.run_many(_feeds(split), max_in_flight=IN_FLIGHT))
                rates.append((label, throughput(count, time.perf_counter() - started)))
            line.done(f"streamed {len(split)} images through the cluster and through {device}")
        best = max(rate for _, rate in rates)
        console.table(
            [Column("mode"), Column("images/s", ">"), Column("")],
            [[name, f"{rate:.0f}", console.bar(rate / best, 24)] for name, rate in rates],
        )
        ctx.results["throughput"] = dict(rates)
        streamed, sequential = rates[1][1], rates[0][1]
        ctx.summary.append(
            ("throughput", f"{streamed:.0f} images/s with run_many, "
                           f"{streamed / sequential:.1f}× one at a time")
        )  # fmt: skip


__all__ = [
    "TOLERANCE",
    "ClassifyTestSplit",
    "CompareLatency",
    "PlanAndDeploy",
    "Throughput",
    "exit_outputs",
    "predicted_class",
]
