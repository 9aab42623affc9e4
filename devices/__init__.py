"""devices: what a device is and how fast — self-profiling, presets, caps, links.

`profile()` measures this device (or returns its cached profile); `presets` holds
reference profiles of typical edge devices; `caps` makes a local process emulate
one of them; `links` measures the round trip and bandwidth to a peer.
This package imports nothing else of the project.
"""

from devices import presets
from devices.caps import (
    ResourceCaps,
    apply_caps,
    caps_environment,
    caps_for_preset,
    caps_from_environment,
    dilate,
    dilated,
    emulated_profile,
)
from devices.cgroup import CgroupLimits, read_limits
from devices.errors import (
    DeviceError,
    LinkMeasureError,
    ProfileCacheError,
    ProfileFormatError,
    UnknownPresetError,
)
from devices.links import LinkProfile, measure_link, measure_zmq_link, serve_echo, zmq_roundtrip
from devices.profile import DeviceProfile

# Imported last on purpose: binds the name `profile` to the function, not the module.
from devices.cache import default_cache_dir, profile  # isort: skip

__all__ = [
    "CgroupLimits",
    "DeviceError",
    "DeviceProfile",
    "LinkMeasureError",
    "LinkProfile",
    "ProfileCacheError",
    "ProfileFormatError",
    "ResourceCaps",
    "UnknownPresetError",
    "apply_caps",
    "caps_environment",
    "caps_for_preset",
    "caps_from_environment",
    "default_cache_dir",
    "dilate",
    "dilated",
    "emulated_profile",
    "measure_link",
    "measure_zmq_link",
    "presets",
    "profile",
    "read_limits",
    "serve_echo",
    "zmq_roundtrip",
]
