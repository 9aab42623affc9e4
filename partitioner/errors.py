"""Errors raised by `partitioner`: models it cannot analyse, plans that cannot fit."""


class PartitionError(Exception):
    """Base of every error raised by `partitioner`."""


class ModelLoadError(PartitionError):
    """The file is not an ONNX model, fails the checker, or shape inference fails."""


class InfeasiblePlanError(PartitionError):
    """No assignment of the model to the given devices fits their memory."""


class PlanMismatchError(PartitionError):
    """A plan was made for another model (its sha256 digest differs)."""


class DigestMismatchError(PartitionError):
    """A shard file's sha256 does not match the digest recorded in the plan."""
