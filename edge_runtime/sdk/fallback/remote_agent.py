"""`RemoteAgent`: an edge-runtime agent on a WAN address (a cloud VM, a box at the office)
as a pipeline fallback.

It speaks the cluster's own protocol, CURVE-encrypted and authenticated, so the
request's tensors are as safe as on the LAN and nothing else has to be run there:
the agent gets the model like any cluster member does (sent once, verified,
cached by content) and runs it whole (`strategy="single"`). The connection and the
deployment are made on first use and kept; after any failure they are dropped, so
the next request connects and deploys afresh (the agent's shard cache makes that
cheap) instead of reusing a connection that may be dead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

# A module import, not `from ... import connect`: it also works while cluster.py is
# still initialising (cluster.py imports the fallback package for its policy).
import edge_runtime.sdk.cluster as sdk_cluster
from edge_runtime.errors import USER_ERRORS, ConfigError, FallbackError
from edge_runtime.sdk.config import DEFAULT_TIMEOUTS, Timeouts
from edge_runtime.sdk.fallback.targets import Answer, ModelInfo

if TYPE_CHECKING:
    from edge_runtime.sdk.deployment import Deployment

log = logging.getLogger(__name__)

# The remote cluster answers alone: its own chain must not fall back to anything
# (say, this device), or a "cloud" answer could secretly come from elsewhere.
_CLUSTER_ONLY = ["cluster"]


class RemoteAgent:
    """A pipeline fallback: one edge-runtime agent at `address` (``tcp://host:7700``).

    `keys`: this machine's keys directory (default ``~/.config/edge-runtime/keys``);
    `server_key`: the agent's public key (default: the key trusted there for
    `address`, as `connect` finds it); `insecure`: no CURVE (only for tests on
    loopback). `timeouts`: the SDK's timeouts for connecting and deploying; each
    request is bounded by the `timeout_s` given to `infer`.
    """

    def __init__(self, address: str, *, keys: str | os.PathLike[str] | None = None,
                 server_key: str | None = None, insecure: bool = False,
                 timeouts: Timeouts | None = None) -> None:
        if not address:
            raise ConfigError("RemoteAgent needs the agent's address, e.g. tcp://host:7700")
        self.address = address
        self._keys = keys
        self._server_key = server_key
        self._insecure = insecure
        self._timeouts = timeouts or DEFAULT_TIMEOUTS
        self._lock = threading.Lock()
        self._cluster: sdk_cluster.Cluster | None = None
        self._deployments: dict[str, Deployment] = {}

    @property
    def name(self) -> str:
        return f"agent:{self.address}"

    @property
    def cloud(self) -> bool:
        return True

    def infer(self, model: ModelInfo, inputs: Mapping[str, np.ndarray],
              timeout_s: float) -> Answer:
        """One inference on the remote agent (connecting and deploying first if needed)."""
        with self._lock:
            try:
                deployment = self._deployment(model)
                result = deployment.run(inputs, timeout_s=timeout_s, fallback=_CLUSTER_ONLY)
            except USER_ERRORS as error:
                self._drop()
                raise FallbackError(str(error), target=self.name) from error
        if result.served_by != "cluster":  # the remote chain is cluster-only; be sure
            raise FallbackError(f"answered by {result.served_by!r}, not the agent",
                                target=self.name)
        return Answer(outputs=dict(result.outputs), served_by=self.name, exit=result.exit)

    def close(self) -> None:
        """Unload what was deployed on the agent and disconnect."""
        with self._lock:
            self._drop()

    # ---- internals (called under the lock) ---------------------------------------------

    def _deployment(self, model: ModelInfo) -> Deployment:
        deployment = self._deployments.get(model.sha256)
        if deployment is not None:
            return deployment
        if self._cluster is None:
            log.info("connecting to fallback agent %s", self.address)
            self._cluster = sdk_cluster.connect(
                [self.address], self._keys, insecure=self._insecure, timeouts=self._timeouts,
                server_keys=[self._server_key] if self._server_key else None,
                fallback=_CLUSTER_ONLY)
        log.info("deploying %s on fallback agent %s", model.name, self.address)
        deployment = self._cluster.deploy(model.path, strategy="single")
        if deployment.model_sha256 != model.sha256:
            raise ConfigError(f"{model.path} changed since it was deployed (sha256 "
                              f"{deployment.model_sha256[:12]}…, expected {model.sha256[:12]}…)")
        self._deployments[model.sha256] = deployment
        return deployment

    def _drop(self) -> None:
        """Forget the connection and deployments (after a failure, or on close)."""
        cluster, self._cluster = self._cluster, None
        self._deployments.clear()
        if cluster is not None:
            try:
                cluster.close()
            except Exception as error:  # the agent may be gone; closing goes on
                log.debug("closing the connection to %s failed: %s", self.address, error)


__all__ = ["RemoteAgent"]
