"""Which links and spin an agent's tensor group uses: plain TCP unless told ZeroMQ; a
spin only where it can pay (tcp links, pinned, a core per member on the host)."""

from __future__ import annotations

import pytest

from edge_runtime.agent.llm_group import AUTO_SPIN_US, auto_spin_us, link_settings


def test_auto_spin_only_where_it_pays() -> None:
    assert auto_spin_us(True, 1, 16, 8) == AUTO_SPIN_US  # bench --pin on the 16-core host
    assert auto_spin_us(False, 1, 16, 8) == 0  # ZeroMQ: the I/O thread decides, not us
    assert auto_spin_us(True, 16, 16, 8) == 0  # not pinned: cores may be shared
    assert auto_spin_us(True, 1, 2, 8) == 0  # 8 agents on 2 cores: spinning steals
    assert auto_spin_us(True, 2, 16, 8) == AUTO_SPIN_US
    assert auto_spin_us(True, 4, 16, 8) == 0


def test_link_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_RUNTIME_GROUP_LINKS", raising=False)
    monkeypatch.delenv("EDGE_RUNTIME_GROUP_SPIN_US", raising=False)
    assert link_settings() == (True, None)
    monkeypatch.setenv("EDGE_RUNTIME_GROUP_LINKS", "ZMQ")
    assert link_settings() == (False, None)
    monkeypatch.setenv("EDGE_RUNTIME_GROUP_LINKS", "TCP")
    monkeypatch.setenv("EDGE_RUNTIME_GROUP_SPIN_US", "0")
    assert link_settings() == (True, 0)
    monkeypatch.setenv("EDGE_RUNTIME_GROUP_SPIN_US", "99999999")
    assert link_settings() == (True, 10_000)
    monkeypatch.setenv("EDGE_RUNTIME_GROUP_SPIN_US", "fast")
    assert link_settings() == (True, None)
