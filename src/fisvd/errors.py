"""Error types for bad user input. Each message names the key, file or matrix and the fix.

Stages turn any `InputError` into one line on stderr and exit code 2 (fisvd.cli).
"""


class InputError(ValueError):
    """Base class: a user-supplied value, file or model is unusable."""


class ParamError(InputError):
    """A params.yaml value is unknown, mistyped or out of range; the message names the key."""


class DataError(InputError):
    """GLUE source files are missing or malformed; the message names the path and the cause."""


class ModelError(InputError):
    """The model name cannot be resolved or loaded, or its weights are unusable."""


class FisherError(InputError):
    """A Fisher file is missing, corrupt, or does not match the model."""


class AllocationError(InputError):
    """A budget cannot be met, or a ranks file is inconsistent with the model."""


class CompressedModelError(InputError):
    """A compressed-model directory is missing files or holds corrupt / inconsistent tensors."""
