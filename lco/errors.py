"""lco's error types: the failures a user can act on. Each message names the key, file or line and the fix.

``lco.cli`` prints any ``LcoError`` (also when Hydra's ``instantiate`` wrapped it) as one ``lco: error:`` paragraph
and exits with status 2; anything else is a bug and keeps its traceback. Each type keeps the builtin base its
callers catch (``ValueError`` for bad input, ``RuntimeError`` for what is missing or broke while running).
"""

from __future__ import annotations


class LcoError(Exception):
    """A failure the user can fix; its message says where and how."""


class ConfigError(LcoError, ValueError):
    """A config key or value that cannot work; the message names the key and the fix."""


class RecordError(LcoError, ValueError):
    """A data row or source that cannot be used; the message names the file and line (or source) and the fix."""


class MediaError(LcoError, ValueError):
    """A media file that cannot be read or is out of bounds; names the file."""


class BatchLayoutError(LcoError, ValueError):
    """A batch whose tensors do not fit the planned passes (GradCache chunks, media slices)."""


class BackboneUnavailable(LcoError, RuntimeError):
    """The model named in the config can be neither found locally nor downloaded."""


class NonFiniteLoss(LcoError, RuntimeError):
    """Training met a NaN/Inf loss (past ``max_nonfinite_skips``) or weights; the message says what to do."""


class HubUnavailable(LcoError, RuntimeError):
    """A push to the Hugging Face hub cannot happen here (offline, unreachable, no token)."""


class NonFiniteEmbeddings(LcoError, ValueError):
    """Embeddings with NaN/Inf entries reached a metric; the message names the rows and what to check."""


class DatasetsUnavailable(LcoError, RuntimeError):
    """The benchmark's datasets are neither cached nor downloadable."""
