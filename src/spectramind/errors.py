"""User-facing errors: each carries the exit code the CLI returns and a one-line message."""


class SpectraMindError(Exception):
    exit_code = 1


class ConfigError(SpectraMindError):
    """A bad key, type, value or override: nothing has run yet."""

    exit_code = 2


class DataError(SpectraMindError):
    """Missing, corrupt or malformed input data (names the file and the problem)."""

    exit_code = 3


class Mismatch(SpectraMindError):
    """`spectramind reproduce`: the re-created run made other results (or was made from other data) than the
    run; the report above the line says what differed and what changed since."""

    exit_code = 4


class Stopped(SpectraMindError):
    """SIGTERM/SIGINT between two pieces of work: the stage stopped cleanly, nothing half-written."""

    exit_code = 0
