"""Errors a user can hit while profiling or emulating a device.

Every message says what to do next; the CLI prints it without a traceback
(`edge_runtime.errors.USER_ERRORS` catches `DeviceError`).
"""


class DeviceError(Exception):
    """Base of every error raised by `devices`."""


class UnknownPresetError(DeviceError, KeyError):
    """A preset name that `devices.presets` does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown preset"


class ProfileCacheError(DeviceError):
    """The profile cache cannot be read or written."""


class ProfileFormatError(DeviceError, ValueError):
    """A profile document (JSON or dict) is missing fields or has wrong types."""


class LinkMeasureError(DeviceError):
    """A link measurement failed: the peer did not echo in time or echoed something else."""
