"""Exceptions llmzip raises for bad input; the CLI turns them into one-line messages."""


class LlmzipError(Exception):
    """Base class: an error caused by input, options or environment, not by a bug."""


class CorruptArchiveError(LlmzipError):
    """The archive fails a structural or checksum test."""


class TruncatedArchiveError(CorruptArchiveError):
    """The archive ends before the data its header announces."""


class UnsupportedVersionError(LlmzipError):
    """The archive was written by a newer (or unknown) format version."""


class WrongModelError(LlmzipError):
    """The archive was made with a different model than the one given."""


class ModelLoadError(LlmzipError):
    """A model could not be fetched or loaded."""


class DecodeMismatchError(CorruptArchiveError):
    """Decoded data fails its checksum: the archive is damaged or the runtime differs."""


class ClusterError(LlmzipError):
    """A Ray cluster cannot be reached, or its workers keep dying."""


class InvalidOptionError(LlmzipError, ValueError):
    """An option value is out of range for this model or this format."""
