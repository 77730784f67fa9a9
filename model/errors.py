"""Typed errors shared by every layer.

`InputError` and its subclasses are problems the caller can fix (wrong path,
unsupported format, clip too long...). Their message says what was wrong and
what to do instead; the tool layers turn them into tool results with
``isError: true`` rather than protocol failures. `BackendError` covers
problems on our side (model missing, model service down).
"""


class TinyMUError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(TinyMUError, ValueError):
    """The request or its audio cannot be processed as given; the caller can fix it."""


class AudioNotFoundError(InputError):
    """The audio path does not exist."""


class NotAFileError(InputError):
    """The audio path names a directory or something else that is not a regular file."""


class EmptyAudioFileError(InputError):
    """The file has zero bytes."""


class UnsupportedAudioError(InputError):
    """The bytes are not audio we can decode (not audio at all, corrupt or truncated)."""


class AudioTooLargeError(InputError):
    """The encoded audio exceeds the configured byte cap."""


class AudioTooLongError(InputError):
    """The (windowed) audio exceeds the configured duration cap."""


class AudioTooShortError(InputError):
    """The (windowed) audio is shorter than the analysis needs."""


class InvalidSamplesError(InputError):
    """The decoded samples contain NaN or infinite values."""


class AccessDeniedError(InputError):
    """The path or URL is outside what this server is allowed to read."""


class BackendError(TinyMUError, RuntimeError):
    """Something on our side failed; retrying or reconfiguring the server may help."""


class ModelUnavailableError(BackendError):
    """No usable music-language model is loaded or reachable."""


class ModelServiceError(BackendError):
    """The remote model service failed, timed out or refused the request."""
