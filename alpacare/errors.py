"""Errors that end a run with one clear line (no traceback) and a non-zero exit."""


class AlpacareError(Exception):
    """A problem the user can fix: bad input, bad config, unreachable endpoint. Printed as one line."""

    exit_code = 2


class ConfigError(AlpacareError):
    """A config value out of range or inconsistent."""


class DataError(AlpacareError):
    """A missing, empty or malformed input file."""


class EndpointError(AlpacareError):
    """An LLM endpoint (teacher or judge) is unreachable, refuses us, or lacks credentials."""


class SpendCapReached(AlpacareError):
    """The next request could push a role's ledger past <role>.max_cost_usd; work so far is kept."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of a third-party exception, for a one-line error message."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:limit]
