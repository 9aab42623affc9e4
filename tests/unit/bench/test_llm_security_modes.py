"""`bench llm --security`: modes are checked, and a mode's agents start with its links and
receive spin in their environment, restored afterwards."""

from __future__ import annotations

import argparse
import os

import pytest

from edge_runtime.agent.llm_group import LINKS_ENV, SPIN_ENV, link_settings
from edge_runtime.bench import llm_security


def _modes(text: str) -> list[str]:
    return llm_security.modes(argparse.Namespace(security=text, insecure=False))


def test_modes_accept_links_and_spin_and_refuse_the_rest() -> None:
    assert _modes("curve,curve:spin1000,insecure+tcp:spin0") == [
        "curve", "curve:spin1000", "insecure+tcp:spin0"]
    for bad in ("curve:spin", "curve:fast", "plain", "curve:spin1k"):
        with pytest.raises(SystemExit):
            _modes(bad)
    assert llm_security.insecure("insecure:spin50") and not llm_security.insecure("curve:spin50")


def test_a_mode_sets_the_agents_environment_and_restores_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPIN_ENV, "7")
    monkeypatch.delenv(LINKS_ENV, raising=False)
    with llm_security.group_links("curve+zmq:spin1000"):
        assert link_settings() == (False, 1000)  # what an agent started now reads
    assert os.environ[SPIN_ENV] == "7" and LINKS_ENV not in os.environ
    with llm_security.group_links("curve"):
        assert link_settings() == (True, None)  # the agents' own choice
    assert os.environ[SPIN_ENV] == "7"
