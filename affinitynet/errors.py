"""Errors that the command line reports as one line (``affinitynet: error: ...``) and exit 2."""


class AffinityNetError(Exception):
    """Base class: anything the user can fix (bad input, bad config)."""


class InputError(AffinityNetError):
    """A file or value given to a stage is missing, corrupt or inconsistent; names the file."""


class ConfigError(AffinityNetError):
    """A configuration key is unknown, has the wrong type, or is out of range; names the key."""
