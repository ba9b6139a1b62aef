"""The errors raytune_st raises for problems a user can fix.

Every one of them carries a single sentence (or two) saying what was wrong, what was
expected and how to fix it. The CLI prints them as one `error:` line and exits with
status 2; anything else is a bug and keeps its traceback.
"""


class RaytuneError(Exception):
    """Base class: a problem with the user's input, not a bug in raytune_st."""


class ConfigError(RaytuneError, ValueError):
    """A config key that is unknown, missing, of the wrong type or out of range."""


class DataError(RaytuneError, ValueError):
    """A data source that is missing, empty, or whose columns or values are wrong."""


class ModelError(RaytuneError, ValueError):
    """A model reference that cannot be resolved or loaded."""


class ClusterError(RaytuneError, RuntimeError):
    """A Ray cluster that cannot be reached or cannot run what was asked."""


class RaytuneWarning(UserWarning):
    """Something a user should know that does not stop the job; the CLI prints it as one `warning:` line."""


class ClusterWarning(RaytuneWarning):
    """A cluster that can run the job, but perhaps not as the user expects (e.g. no CPU left to read data)."""
