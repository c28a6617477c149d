"""Domain exceptions of the policy package.

``PolicyError`` names one defect of one policy file as ``file:field: reason``;
``PolicySetError`` carries every defect of a policy set at once, so that a DPO fixes them in
one pass. ``PolicyViolation`` says why a partner's query falls outside its grant.
"""

from __future__ import annotations


class PolicyError(Exception):
    """One defect in one policy file.

    ``file`` is relative to the policy directory (``datasets/uk-helpline-2024.yaml``),
    ``field`` is a dotted path inside the file (``grants.0.budget``; empty when the defect
    concerns the whole file), ``reason`` says what is wrong and what would be right.
    """

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(file, field, reason)
        self.file = file
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        if self.field:
            return f"{self.file}:{self.field}: {self.reason}"
        return f"{self.file}: {self.reason}"


class PolicySetError(Exception):
    """A policy set was refused; ``errors`` lists every defect found, one per line in str()."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class PolicyViolation(Exception):
    """A query asks for something the partner's grant does not allow.

    ``rule`` is a stable short name (``no_grant``, ``expired``, ``statistic``, ``dimension``,
    ``max_per_query``) for clients and metrics; ``message`` is the exact explanation.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message

    def __str__(self) -> str:
        return self.message
