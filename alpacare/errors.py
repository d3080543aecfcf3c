"""Errors that end a run with one clear line (no traceback) and a non-zero exit."""


class AlpacareError(Exception):
    """A problem the user can fix: bad input, bad config, unreachable endpoint. Printed as one line."""

    exit_code = 2


class ConfigError(AlpacareError):
    """A config value out of range or inconsistent."""


class DataError(AlpacareError):
    """A missing, empty or malformed input file."""


class TeacherError(AlpacareError):
    """The teacher endpoint is unreachable, refuses us, or lacks credentials."""


class SpendCapReached(AlpacareError):
    """The next request could push the ledger past teacher.max_cost_usd; work so far is kept."""

    exit_code = 3
