"""Errors a user can hit while profiling or emulating a device."""


class DeviceError(Exception):
    """Base of every error raised by `devices`."""


class UnknownPresetError(DeviceError, KeyError):
    """A preset name that `devices.presets` does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown preset"


class ProfileCacheError(DeviceError):
    """The profile cache cannot be read or written."""
