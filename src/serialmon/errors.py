"""Exceptions that the CLI turns into a one-line message with a fix."""

from __future__ import annotations


class SerialmonError(Exception):
    """A problem the user can fix; the CLI prints it on one line and exits with code 2."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} {self.fix}" if self.fix else message


class SettingsError(SerialmonError):
    """A setting has an invalid value."""


class DatabaseUnavailable(SerialmonError):
    """The database cannot be reached."""


class MissingTable(SerialmonError):
    """The monitored table or serialmon's schema does not exist."""


class EmbeddedServerError(SerialmonError):
    """The embedded PostgreSQL could not be started or found."""


def first_line(error: BaseException) -> str:
    """Return the first line of an error's message, or its type name when the message is empty.

    For a SQLAlchemy error it is the driver's message, without the statement
    that SQLAlchemy appends.
    """
    original = getattr(error, "orig", None) or error
    message = str(original).strip()
    return message.splitlines()[0] if message else type(original).__name__
