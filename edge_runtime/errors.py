"""The typed errors of edge-runtime.

Every error a user can cause or meet (bad input, an unreachable agent, a model
that does not fit) is one of these, with a message that says what to do. Each
lower package has its own base (`devices.DeviceError`, `transports.TransportError`,
`partitioner.PartitionError`) because those packages import nothing of this one;
they are re-exported here so an app needs only `edge_runtime.errors`.
`USER_ERRORS` is the tuple to catch all of them.
"""

from __future__ import annotations

from devices.errors import DeviceError, ProfileCacheError, UnknownPresetError
from partitioner.errors import PartitionError
from transports.errors import TransportError


class EdgeRuntimeError(Exception):
    """Base of the errors raised by `edge_runtime` itself."""


class ConfigError(EdgeRuntimeError):
    """A command-line option, SDK argument or config file is invalid."""


class InputError(EdgeRuntimeError):
    """Inputs do not match the deployed model's signature (names, shapes, dtypes)."""


class AgentError(EdgeRuntimeError):
    """An agent answered a request with an error; `agent` names it."""

    def __init__(self, message: str, agent: str = "") -> None:
        super().__init__(f"{agent}: {message}" if agent else message)
        self.agent = agent


class AgentUnavailableError(AgentError):
    """An agent died or did not answer within its timeout."""


class ClusterUnavailableError(AgentUnavailableError):
    """No agent left can serve the request (all down, or the survivors cannot hold the
    model) and no fallback answered it; the message lists every path tried and why."""


class AgentBusyError(AgentError):
    """An agent refused work because its queue for that kind of request is full; retry later."""


class DeployError(EdgeRuntimeError):
    """A model could not be deployed (transfer, verification, memory budget)."""


class MemoryBudgetError(DeployError):
    """Loading would exceed an agent's memory budget."""


class ShardIntegrityError(DeployError):
    """A shard's bytes do not match its sha256 digest: it was corrupted or tampered with."""


class DeploymentGoneError(DeployError, AgentError):
    """A request named a deployment the agent (`agent`) does not hold: its coordinator's
    lease lapsed, or the agent restarted. A deployment with failover places itself
    again; otherwise redeploy it."""


class UploadQuotaError(DeployError):
    """An upload would exceed the disk an agent allows for incomplete uploads."""


class CheckpointError(EdgeRuntimeError):
    """An LLM checkpoint is missing files, has unsupported config fields or mismatched tensors."""


class GenerationError(EdgeRuntimeError):
    """A generation request cannot be served (e.g. the prompt is longer than the context)."""


class ContextLengthError(GenerationError):
    """The prompt plus the tokens asked for do not fit the deployment's context.

    Carries the counts so a server can answer OpenAI's `context_length_exceeded`
    without checking the length a second time."""

    def __init__(self, prompt_tokens: int, new_tokens: int, max_context: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.new_tokens = new_tokens
        self.max_context = max_context
        super().__init__(
            f"the prompt ({prompt_tokens} tokens) plus max_new_tokens ({new_tokens}) exceeds "
            f"the context of {max_context} tokens: shorten the prompt, ask for fewer tokens, "
            "or deploy with a larger max_context")


class FallbackError(EdgeRuntimeError):
    """A fallback target (this device, a cloud agent, a KServe v2 or OpenAI-compatible
    server) could not answer; `target` names it."""

    def __init__(self, message: str, target: str = "") -> None:
        super().__init__(f"{target}: {message}" if target else message)
        self.target = target


class JournalError(EdgeRuntimeError):
    """The request journal cannot be opened or written (path, disk, a newer schema)."""


class JournalFullError(JournalError):
    """The journal holds its maximum of unfinished requests; finish or resume them first."""


class DuplicateRequestError(EdgeRuntimeError):
    """A request key was already used; each key is answered once."""


class QueueFullError(EdgeRuntimeError):
    """A scheduler already holds its maximum of waiting requests; retry later."""


class DeadlineError(EdgeRuntimeError):
    """A request's deadline passed before any path could answer it."""


USER_ERRORS: tuple[type[Exception], ...] = (
    EdgeRuntimeError,
    DeviceError,
    TransportError,
    PartitionError,
)


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message is meant for the user (no traceback needed)."""
    return isinstance(error, USER_ERRORS)


__all__ = [
    "USER_ERRORS",
    "AgentBusyError",
    "AgentError",
    "AgentUnavailableError",
    "CheckpointError",
    "ClusterUnavailableError",
    "ConfigError",
    "ContextLengthError",
    "DeadlineError",
    "DeployError",
    "DeploymentGoneError",
    "DeviceError",
    "DuplicateRequestError",
    "EdgeRuntimeError",
    "FallbackError",
    "GenerationError",
    "InputError",
    "JournalError",
    "JournalFullError",
    "MemoryBudgetError",
    "PartitionError",
    "ProfileCacheError",
    "QueueFullError",
    "ShardIntegrityError",
    "TransportError",
    "UnknownPresetError",
    "UploadQuotaError",
    "is_user_error",
]
