"""Turning an agent's error frame back into the typed error it was on the agent.

The agent sends the class name (`error_type`) and message (`protocol.ErrorInfo`);
the SDK raises the class of that name from `edge_runtime.errors` (so `InputError`
on the agent is `InputError` here, `DeploymentGoneError` says to redeploy), with the
agent named. Anything else, including a malformed error frame, becomes `AgentError`.
"""

from __future__ import annotations

from edge_runtime import errors
from edge_runtime.protocol import ErrorInfo
from transports.errors import ProtocolError
from transports.wire import Frame

_BY_NAME: dict[str, type[errors.EdgeRuntimeError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.EdgeRuntimeError)
}


def error_from_frame(frame: Frame, agent: str) -> errors.EdgeRuntimeError:
    """The typed error an `error` frame from `agent` stands for."""
    try:
        info = ErrorInfo.from_meta(frame.meta)
    except ProtocolError as error:
        return errors.AgentError(f"sent a malformed error frame ({error.reason})", agent=agent)
    details = info.details or {}
    if details.get("agent"):
        agent = str(details["agent"])
    cls = _BY_NAME.get(info.error_type)
    if cls is None:
        return errors.AgentError(f"{info.error_type}: {info.message}", agent=agent)
    if issubclass(cls, errors.AgentError):
        return cls(info.message, agent=agent)
    return cls(f"{agent}: {info.message}")
