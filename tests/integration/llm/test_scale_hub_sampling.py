"""Three real agents sample on the group's hub and draw exactly the coordinator's tokens.

`generate` steps are answered with tokens: the hub samples with the engine's `sample`
and the generator state the step carried (greedy and top-k from the members'
candidates only, temperature alone from full rows). The same generations run again
through an engine that only sees the hub's logits and samples here, as before: the
tokens must be identical, greedy and seeded. `logits()` still answers full logits
within 1e-3 of transformers, and a batched step samples each sequence with its own
generator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import edge_runtime as er
from edge_runtime.llm.engine import BatchItem, LlmEngine, SamplingRunner
from edge_runtime.llm.sampling import Draw, SamplingParams, sample

IDS = (1, 5, 17, 33, 99, 150, 7, 8)
SETTINGS = (
    {},  # greedy
    {"temperature": 0.9, "top_k": 8, "seed": 3},  # candidates only
    {"temperature": 1.2, "top_k": 20, "top_p": 0.9, "seed": 4},
    {"temperature": 1.1, "seed": 5},  # full rows gathered, sampled on the hub
)


class LogitsOnly:
    """The deployment's runner seen as a plain `Runner`: the engine samples here from
    the hub's logits (how every token was drawn before the hub sampled)."""

    def __init__(self, runner: er.LlmDeployment) -> None:
        self._runner = runner.runner

    @property
    def max_context(self) -> int:
        return self._runner.max_context

    def forward(self, token_ids: Sequence[int], start: int, *,
                last_only: bool = True) -> np.ndarray:
        return self._runner.forward(token_ids, start, last_only=last_only)


def test_hub_sampling_draws_the_coordinators_tokens(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    llm = cluster.deploy_llm(checkpoint("llama"), max_context=48, max_batch=2)
    try:
        assert isinstance(llm.runner, SamplingRunner)
        names = list(llm.agents)
        here = LlmEngine(LogitsOnly(llm), llm.engine.config)
        hub = names[llm.plan.hub]
        for settings in SETTINGS:
            before = llm.status()[hub]["sampled"]
            remote = llm.generate(list(IDS), 10, **settings)
            assert llm.status()[hub]["sampled"] - before == 10, "the hub sampled each token"
            local = here.generate(list(IDS), 10, **settings)
            assert remote.token_ids == local.token_ids, settings

        np.testing.assert_allclose(llm.logits(list(IDS)), reference("llama", IDS),
                                   atol=1e-3, rtol=0)

        # a batched step: each sequence drawn with its own generator, as here
        params = SamplingParams(temperature=1.0, top_k=10)
        items = [BatchItem(0, IDS, 0), BatchItem(1, IDS[:5], 0)]
        draws = [Draw(params, np.random.default_rng(s)) for s in (21, 22)]
        mine = [np.random.default_rng(s) for s in (21, 22)]
        tokens = llm.runner.forward_sampled(items, draws)
        logits = llm.runner.forward_batch(items, last_only=True)
        assert tokens == [sample(row, params, r) for row, r in zip(logits, mine, strict=True)]
        assert [d.rng.random() for d in draws] == [r.random() for r in mine]
    finally:
        llm.unload()
