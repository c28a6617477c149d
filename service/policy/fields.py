"""Marshmallow fields for policy files: strict YAML values, and the words that name them.

Each field accepts one kind of YAML value and refuses the rest rather than converting it
(a ``yes`` is not ``true``, a ``"5"`` is not 5), because a value read differently from what
the DPO wrote could leave a budget or a bound other than intended. The schemas in
``service.policy.schemas`` are built from these.

Error messages are lowercase reasons without a final full stop; the loader prefixes them with
the file and the dotted field path.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from marshmallow import Schema, ValidationError, fields
from marshmallow.types import ErrorMessages

from service.policy.model import CONTACTS_COLUMN, PERSON_COLUMN, is_month

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
POLICY_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Upload columns that are not dimensions or measures; a dimension of the same name would make
# an upload ambiguous (is `person` a pseudonym to truncate by, or a dimension value?).
RESERVED_COLUMNS = (CONTACTS_COLUMN, PERSON_COLUMN)
# The ledger counts budgets in integer nano-units, so every amount must be a whole number of
# them: anything finer would be rounded, and a rounded budget is not the budget the DPO set.
AMOUNT_DECIMALS = 9
# Spends are summed in 64-bit integers of nano-units: a billion (10**18 nano-units) leaves room
# for a budget's spend plus one more charge, and is far beyond any budget that still protects
# anyone.
AMOUNT_MAX = 10**9
# A contact's measure value, as a dataset's totals: at most 2**31 - 1 either way, so that every
# bound a policy sets fits the 64-bit columns the cells are summed in.
MEASURE_BOUND = 2**31 - 1

_FIELD_MESSAGES: ErrorMessages = {
    "required": "required field is missing",
    "null": "must not be null",
}


def describe(value: object) -> str:
    """The YAML kind of a parsed value, for messages such as 'must be a number, not a string'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


class Text(fields.Field[str]):
    """A non-blank string (YAML numbers, dates and booleans are refused, not converted)."""

    default_error_messages = _FIELD_MESSAGES

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"must be a string, not {describe(value)}")
        if not value.strip():
            raise ValidationError("must not be empty")
        return value


class Choice(Text):
    """One of a fixed list of words."""

    def __init__(self, choices: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = tuple(choices)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text not in self.choices:
            raise ValidationError(f"must be one of {', '.join(self.choices)}, not '{text}'")
        return text


class Identifier(Text):
    """A lowercase identifier usable as a column name: ``[a-z][a-z0-9_]*``."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not IDENTIFIER.fullmatch(text):
            raise ValidationError(f"'{text}' is not a lowercase identifier [a-z][a-z0-9_]*")
        return text


class PolicyId(Text):
    """A dataset or partner id: lowercase letters, digits, '-' and '_' (it appears in URLs)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not POLICY_ID.fullmatch(text):
            raise ValidationError(
                f"'{text}' is not an id: use up to 64 lowercase letters, digits, '-' and '_'"
            )
        return text


class WholeNumber(fields.Field[int]):
    """An integer, within ``minimum`` and ``maximum`` when given (YAML floats and strings are
    refused)."""

    default_error_messages = _FIELD_MESSAGES

    def __init__(
        self, *, minimum: int | None = None, maximum: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.minimum = minimum
        self.maximum = maximum

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, float):
            raise ValidationError(f"must be a whole number, not {value}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"must be a whole number, not {describe(value)}")
        if self.minimum is not None and value < self.minimum:
            raise ValidationError(f"must be at least {self.minimum}, not {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"must be at most {self.maximum}, not {value}")
        return value


class Flag(fields.Field[bool]):
    """``true`` or ``false``; unlike marshmallow's Boolean, 'yes', 1 or 'on' are refused."""

    default_error_messages = _FIELD_MESSAGES

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(f"must be true or false, not {describe(value)}")
        return value


class Amount(fields.Field[Fraction]):
    """A positive, finite number converted exactly to a ``Fraction`` through its decimal text.

    ``Fraction(str(0.1))`` is exactly 1/10, where ``Fraction(0.1)`` would be the binary float
    nearest to it; budgets are compared and summed exactly, so the DPO's decimal must be kept.
    """

    default_error_messages = _FIELD_MESSAGES

    def __init__(
        self, *, max_decimals: int | None = AMOUNT_DECIMALS, below_one: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_decimals = max_decimals
        self.below_one = below_one

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Fraction:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"must be a number, not {describe(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"must be a finite number, not {value}")
        amount = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
        if amount <= 0:
            raise ValidationError(f"must be greater than 0, not {value}")
        if amount > AMOUNT_MAX:
            raise ValidationError(f"must be at most {AMOUNT_MAX:,}, not {value}")
        if self.below_one and amount >= 1:
            raise ValidationError(f"must be less than 1, not {value}")
        if self.max_decimals is not None and (amount * 10**self.max_decimals).denominator != 1:
            raise ValidationError(
                f"must have at most {self.max_decimals} decimal places, not {value}"
            )
        return amount


class Month(fields.Field[str]):
    """A calendar month written ``YYYY-MM``."""

    default_error_messages = _FIELD_MESSAGES

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"must be a month YYYY-MM, not {describe(value)}")
        if not is_month(value):
            raise ValidationError(f"'{value}' is not a month YYYY-MM")
        return value


class Day(fields.Field[datetime.date]):
    """A calendar date written ``YYYY-MM-DD``."""

    default_error_messages = _FIELD_MESSAGES

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> datetime.date:
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return value
        if isinstance(value, str):
            try:
                return datetime.date.fromisoformat(value)
            except ValueError:
                raise ValidationError(f"'{value}' is not a date YYYY-MM-DD") from None
        raise ValidationError(f"must be a date YYYY-MM-DD, not {describe(value)}")


class ListOf(fields.List[Any]):
    """A YAML list; ``non_empty`` and ``unique`` are checked once every item is valid."""

    default_error_messages = {**_FIELD_MESSAGES, "invalid": "must be a list"}

    def __init__(
        self,
        inner: fields.Field[Any],
        *,
        noun: str,
        non_empty: bool = False,
        unique: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(inner, **kwargs)
        self.noun = noun
        self.non_empty = non_empty
        self.unique = unique

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[Any]:
        if not isinstance(value, list):
            raise ValidationError(f"must be a list, not {describe(value)}")
        items: list[Any] = super()._deserialize(value, attr, data, **kwargs)
        if self.non_empty and not items:
            raise ValidationError(f"must list at least one {self.noun}")
        if self.unique:
            seen: list[Any] = []
            for item in items:
                if item in seen:
                    raise ValidationError(f"duplicate {self.noun} '{item}'")
                seen.append(item)
        return items


class Section(fields.Nested):
    """A nested mapping read with its own schema."""

    default_error_messages = {**_FIELD_MESSAGES, "type": "must be a mapping"}


class NamedEntries(fields.Field[dict[str, Any]]):
    """A mapping from identifier names (dimensions, measures) to entries of one schema.

    Errors are reported under the entry's name, e.g. ``dimensions.month.from``.
    """

    default_error_messages = _FIELD_MESSAGES

    def __init__(self, schema: type[Schema], *, noun: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entry_schema = schema()
        self.noun = noun

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError(
                f"must be a mapping of {self.noun} names to {self.noun}s, not {describe(value)}"
            )
        entries: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, entry in value.items():
            if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
                errors[str(name)] = [
                    f"{self.noun} name '{name}' is not a lowercase identifier [a-z][a-z0-9_]*"
                ]
                continue
            if name in RESERVED_COLUMNS:
                errors[name] = [
                    f"'{name}' is a reserved column name "
                    f"({', '.join(RESERVED_COLUMNS)}) and cannot be a {self.noun}"
                ]
                continue
            try:
                entries[name] = self.entry_schema.load(entry if entry is not None else {})
            except ValidationError as error:
                errors[name] = error.messages
        if errors:
            raise ValidationError(errors)
        return entries
