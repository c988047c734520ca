"""The exception hierarchy: one root, specific subclasses; only the CLI maps them to exit codes."""

from __future__ import annotations


class RelayError(Exception):
    """Root of every error outbox-relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration file is missing, unreadable or invalid.

    `key_path` is the dotted path of the offending key (`upstream.port`), `file` and `line`
    locate it in the YAML where known. The message never contains a secret's value.
    """

    def __init__(
        self,
        message: str,
        *,
        key_path: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.key_path = key_path
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key_path}: " if self.key_path else ""
        return f"{where}{key}{self.message}"


class RuleError(RelayError):
    """A rule pack is invalid; the message names the file, the line and the rule id."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        rule_id: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.rule_id = rule_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        rule = f"rule {self.rule_id}: " if self.rule_id else ""
        return f"{where}{rule}{self.message}"


class ExtractionError(RelayError):
    """A message could not be turned into scannable text within the configured limits."""


class UpstreamError(RelayError):
    """The upstream did not accept a message; carries the reply the client should get.

    `code` and `text` form the SMTP reply line (`451`, `4.4.1 upstream unreachable`),
    `permanent` is true for a 5xx the upstream itself gave.
    """

    def __init__(self, code: int, text: str, *, permanent: bool = False) -> None:
        self.code = code
        self.text = text
        self.permanent = permanent
        super().__init__(f"{code} {text}")


class QuarantineError(RelayError):
    """The quarantine store could not durably hold or change a message."""
