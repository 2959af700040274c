"""The one exception tree of Floodgate.

::

    FloodgateError
    ├── ConfigError            a config or profile file is wrong (file, line, key)
    │                          carries a list of ConfigIssue
    ├── ContractError          a message breaks the MQTT wire contract (reason code)
    ├── CommandRejected        a command was refused (reason code)
    ├── RequestError           a person's request cannot be done (code, message)
    │   ├── TicketError, CommandError, AuthError  (in cloud/)
    └── BusError               a field-bus transaction failed
        ├── NoResponse         the slave did not answer within the timeout
        ├── ModbusException    the slave answered with a Modbus exception code
        └── LinkDown           the port or socket is not open
"""

from __future__ import annotations

from dataclasses import dataclass


class FloodgateError(Exception):
    """Base of every error Floodgate raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One thing wrong in a config file."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}"


class ConfigError(FloodgateError):
    """A config or profile is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class ContractError(FloodgateError):
    """A message does not follow the wire contract.

    ``code`` is a short machine-readable reason (``too_large``, ``bad_json``,
    ``bad_version``, ``node_mismatch``, ``schema``, ``bad_topic``) and
    ``detail`` says what exactly.
    """

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"[{code}] {detail}")


class CommandRejected(FloodgateError):
    """A command was refused; ``code`` goes into the ``cmd-result`` reason."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class RequestError(FloodgateError):
    """A request that cannot be done; ``code`` says why (the API maps it to a status).

    Codes: ``invalid`` (422), ``not_found`` (404), ``conflict`` (409),
    ``unauthorized`` (401), ``no_key`` (422), ``unavailable`` (503).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BusError(FloodgateError):
    """A field-bus transaction failed."""


class NoResponse(BusError):
    """The slave did not answer in time (after the configured retries)."""


class ModbusException(BusError):
    """The slave answered with a Modbus exception (1 illegal function, 2 illegal address, ...)."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        super().__init__(f"modbus exception {code}{': ' + detail if detail else ''}")


class LinkDown(BusError):
    """The serial port or TCP connection is not open."""
