"""Turning an agent's error frame back into the typed error it was on the agent.

The agent sends the class name (`error_type`) and message; the SDK raises the
class of that name from `edge_runtime.errors` (so `InputError` on the agent is
`InputError` here), with the agent named. Anything else becomes `AgentError`.
"""

from __future__ import annotations

from edge_runtime import errors
from transports.wire import Frame

_BY_NAME: dict[str, type[errors.EdgeRuntimeError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.EdgeRuntimeError)
}


def error_from_frame(frame: Frame, agent: str) -> errors.EdgeRuntimeError:
    """The typed error an `error` frame from `agent` stands for."""
    error_type = str(frame.meta.get("error_type", "AgentError"))
    message = str(frame.meta.get("message", "(no message)"))
    details = frame.meta.get("details")
    if isinstance(details, dict) and details.get("agent"):
        agent = str(details["agent"])
    cls = _BY_NAME.get(error_type)
    if cls is None:
        return errors.AgentError(f"{error_type}: {message}", agent=agent)
    if issubclass(cls, errors.AgentError):
        return cls(message, agent=agent)
    return cls(f"{agent}: {message}")
