"""The errors vidkd raises on bad input. Each names the file (and line or key) it is about."""


class VidkdError(Exception):
    """Base class: a problem with the user's input, reported without a deep traceback."""


class ConfigError(VidkdError):
    """A config file or command-line override is wrong (unknown key, wrong type, bad value)."""


class AnnotationError(VidkdError):
    """An annotation file has a bad row. The message starts with `file:line:`."""

    def __init__(self, path, line, message):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class DecodeError(VidkdError):
    """A video (or frame folder) cannot be opened or decoded by any backend."""

    def __init__(self, path, message):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class DecodeTimeout(DecodeError):
    """Decoding took longer than DATA.DECODE_TIMEOUT seconds."""


class DataError(VidkdError):
    """Too many videos failed to decode in one epoch; the message lists them."""


class CheckpointError(VidkdError):
    """A checkpoint cannot be read, or does not fit the model; the message names the file and the keys."""


class UnsafePickleError(CheckpointError):
    """A pickle names a callable beyond plain data (it could run code); it was refused before anything ran."""

    def __init__(self, path, name):
        self.path, self.name = str(path), name
        super().__init__(f"{path}: refused {name}: vidkd reads only plain data (and numpy arrays where it asks "
                         f"for them) from a pickle")


class TrainingError(VidkdError):
    """Training cannot go on (e.g. the loss stayed NaN / Inf for TRAIN.MAX_BAD_STEPS steps in a row); the
    message names the loss terms and the last good checkpoint."""


class ExportError(VidkdError):
    """An exported model (TorchScript, ONNX) gives outputs further from the eager model's than the tolerance."""
