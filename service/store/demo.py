"""SYNTHETIC helpline contact records, for demonstrations and tests only.

No record here describes a real person or a real contact: every value is drawn from a seeded
pseudo-random generator with hand-picked, plausible helpline patterns, and every pseudonym
starts with ``synthetic-``. The patterns make the demo worth querying:

* channel mix (phone, chat, email, web), caller types (mostly people concerned about their
  own thoughts or behaviour) and referral sources;
* a police warning campaign in the middle month of the dataset, after which contacts citing
  ``police_warning`` rise, as a police unit would hope to see;
* seasonality over months and a dominant first country;
* minutes per contact from a lognormal distribution, with a few values beyond the measure
  bounds so that clamping is exercised;
* repeat callers, some over the dataset's ``max_contacts_per_person`` bound, so that
  truncation is exercised.

Any dataset policy works: dimensions with known names get the helpline patterns, other
categorical dimensions are drawn with skewed weights, month dimensions with seasonality.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from service.policy.model import PERSON_COLUMN, DatasetPolicy, Dimension, Measure

SYNTHETIC_PERSON_PREFIX = "synthetic-"
POLICE_WARNING = "police_warning"
REFERRAL_SOURCE = "referral_source"

# Relative weights of known values; a value the table does not know gets _UNKNOWN_WEIGHT.
_PATTERNS: dict[str, dict[str, float]] = {
    "channel": {"phone": 0.38, "chat": 0.22, "email": 0.10, "web": 0.30},
    "caller_type": {
        "self_concerned": 0.58,
        "family_friend": 0.20,
        "professional": 0.11,
        "survivor": 0.05,
        "other": 0.06,
    },
    REFERRAL_SOURCE: {
        "social_media_ad": 0.22,
        POLICE_WARNING: 0.04,
        "search_warning": 0.16,
        "professional": 0.20,
        "word_of_mouth": 0.24,
        "other": 0.14,
    },
}
_UNKNOWN_WEIGHT = 0.05
_FIRST_COUNTRY_SHARE = 0.75
_POLICE_WARNING_RISE = 5.0
_CAMPAIGN_VOLUME_RISE = 1.15

# Median minutes by channel: web self-help sessions are short, chats run long.
_MEDIAN_MINUTES = {"phone": 25.0, "chat": 40.0, "email": 12.0, "web": 6.0}
_MINUTES_SIGMA = 0.8
_BEYOND_BOUNDS_SHARE = 0.005

_REPEAT_CALLER_SHARE = 0.01
_MEAN_CONTACTS_PER_PERSON = 1.7
_CHANNEL_LOYALTY = 0.75


def police_campaign_month(dataset: DatasetPolicy) -> str | None:
    """The month of the synthetic police warning campaign: the middle month of the first
    month dimension, when the dataset also has a referral source with ``police_warning``."""
    month = _first_month(dataset)
    if month is None or POLICE_WARNING not in _referral_values(dataset):
        return None
    return month.values[len(month.values) // 2]


def generate_contacts(dataset: DatasetPolicy, *, contacts: int, seed: int) -> pl.DataFrame:
    """SYNTHETIC contact records for ``dataset``: one row per contact, columns the
    dimensions (Utf8, values in their domains), the measures (Int64, a few beyond bounds)
    and ``person`` (a synthetic pseudonym), in month order. The same seed gives the same
    records."""
    if contacts < 0:
        raise ValueError(f"contacts must be non-negative, got {contacts}")
    # Demo data, not privacy noise: numpy's seeded generator is right for reproducible
    # examples. Every noise draw of a release goes through OpenDP instead.
    rng = np.random.default_rng(seed)
    person = _persons(rng, contacts, dataset.max_contacts_per_person)
    person_count = int(person.max()) + 1 if contacts else 0

    columns: dict[str, np.ndarray] = {}
    month = _first_month(dataset)
    campaign = police_campaign_month(dataset)
    after_campaign = np.zeros(contacts, dtype=bool)
    if month is not None:
        weights = _seasonal_weights(month, campaign)
        columns[month.name] = rng.choice(len(month.values), size=contacts, p=weights)
        if campaign is not None:
            after_campaign = columns[month.name] >= month.values.index(campaign)

    def draw(dimension: Dimension, size: int, *, campaign: bool = False) -> np.ndarray:
        weights = _weights(dimension, campaign=campaign)
        drawn: np.ndarray = rng.choice(len(dimension.values), size=size, p=weights)
        return drawn

    for dimension in dataset.dimensions:
        if dimension.name in columns:
            continue
        if dimension.kind == "month":
            weights = _seasonal_weights(dimension, None)
            columns[dimension.name] = rng.choice(len(dimension.values), size=contacts, p=weights)
        elif dimension.name in ("country", "caller_type"):
            # Who calls and from where belongs to the person, not to each contact.
            columns[dimension.name] = draw(dimension, person_count)[person]
        elif dimension.name == "channel":
            # Most people keep to the channel they first used.
            preferred = draw(dimension, person_count)[person]
            loyal = rng.random(contacts) < _CHANNEL_LOYALTY
            columns[dimension.name] = np.where(loyal, preferred, draw(dimension, contacts))
        elif dimension.name == REFERRAL_SOURCE and campaign is not None:
            before = draw(dimension, contacts)
            after = draw(dimension, contacts, campaign=True)
            columns[dimension.name] = np.where(after_campaign, after, before)
        else:
            columns[dimension.name] = draw(dimension, contacts)

    channel = dataset.dimension("channel") if "channel" in columns else None
    frame = pl.DataFrame(
        [
            *(
                pl.Series(dimension.name, dimension.values, pl.Utf8).gather(columns[dimension.name])
                for dimension in dataset.dimensions
            ),
            *(
                pl.Series(
                    measure.name,
                    _measure_values(
                        rng,
                        measure,
                        contacts,
                        channel_values=channel.values if channel else None,
                        channel=columns.get("channel"),
                    ),
                    pl.Int64,
                )
                for measure in dataset.measures
            ),
            _pseudonyms(rng, person, person_count),
        ]
    )
    if month is not None:
        order = np.argsort(columns[month.name], kind="stable")
        frame = frame[order]
    return frame


def _first_month(dataset: DatasetPolicy) -> Dimension | None:
    return next((d for d in dataset.dimensions if d.kind == "month"), None)


def _referral_values(dataset: DatasetPolicy) -> tuple[str, ...]:
    for dimension in dataset.dimensions:
        if dimension.name == REFERRAL_SOURCE:
            return dimension.values
    return ()


def _normalised(weights: list[float]) -> np.ndarray:
    array = np.asarray(weights, dtype=float)
    normalised: np.ndarray = array / array.sum()
    return normalised


def _weights(dimension: Dimension, *, campaign: bool = False) -> np.ndarray:
    """Draw weights of a categorical dimension's values, skewed towards the first ones."""
    values = dimension.values
    if dimension.name == "country":
        rest = [1.0 / (index + 1) for index in range(len(values) - 1)]
        rest_total = sum(rest) or 1.0
        share = _FIRST_COUNTRY_SHARE if rest else 1.0
        return _normalised([share, *((1 - share) * r / rest_total for r in rest)])
    pattern = _PATTERNS.get(dimension.name)
    if pattern is None:
        return _normalised([1.0 / (index + 1) for index in range(len(values))])
    weights = [pattern.get(value, _UNKNOWN_WEIGHT) for value in values]
    if campaign:
        weights = [
            weight * _POLICE_WARNING_RISE if value == POLICE_WARNING else weight
            for value, weight in zip(values, weights, strict=True)
        ]
    return _normalised(weights)


def _seasonal_weights(month: Dimension, campaign: str | None) -> np.ndarray:
    """Month weights: more contacts in winter than in summer, more after the campaign."""
    weights = []
    for value in month.values:
        month_of_year = int(value[5:7])
        weight = 1.0 + 0.2 * math.cos(2 * math.pi * (month_of_year - 1) / 12)
        if campaign is not None and value >= campaign:
            weight *= _CAMPAIGN_VOLUME_RISE
        weights.append(weight)
    return _normalised(weights)


def _persons(rng: np.random.Generator, contacts: int, bound: int) -> np.ndarray:
    """The person index of each contact, in random order.

    Most people get in touch once or a few times; a few repeat callers get in touch more
    often than the dataset's per-person bound, which ingest then truncates.
    """
    if contacts == 0:
        return np.zeros(0, dtype=np.int64)
    expected = max(1, int(contacts / _MEAN_CONTACTS_PER_PERSON * 1.2) + 1)
    counts = rng.geometric(0.6, size=expected)
    repeat = rng.random(expected) < _REPEAT_CALLER_SHARE
    counts[repeat] = rng.integers(bound + 1, 2 * bound + 1, size=int(repeat.sum()))
    while counts.sum() < contacts:
        counts = np.concatenate([counts, rng.geometric(0.6, size=expected)])
    person = np.repeat(np.arange(counts.size), counts)[:contacts]
    return rng.permutation(person)


def _pseudonyms(rng: np.random.Generator, person: np.ndarray, person_count: int) -> pl.Series:
    # Pseudonym numbers are shuffled so that they say nothing about how often a person calls.
    numbers = rng.permutation(person_count)[person] if person.size else person
    digits = pl.Series(PERSON_COLUMN, numbers, pl.Int64).cast(pl.Utf8).str.zfill(7)
    return pl.select(pl.lit(SYNTHETIC_PERSON_PREFIX) + digits).to_series().alias(PERSON_COLUMN)


def _measure_values(
    rng: np.random.Generator,
    measure: Measure,
    contacts: int,
    *,
    channel_values: tuple[str, ...] | None,
    channel: np.ndarray | None,
) -> np.ndarray:
    """Lognormal values clipped to the bounds, then a few moved beyond them."""
    span = measure.upper - measure.lower
    median = np.full(contacts, max(1.0, span / 5))
    if measure.name == "minutes" and channel_values is not None and channel is not None:
        by_channel = np.array(
            [_MEDIAN_MINUTES.get(value, span / 5) for value in channel_values], dtype=float
        )
        median = by_channel[channel]
    drawn = measure.lower + np.rint(median * rng.lognormal(0.0, _MINUTES_SIGMA, contacts))
    values = np.clip(drawn, measure.lower, measure.upper).astype(np.int64)
    # Real exports hold the odd data-entry error or overlong session: values beyond the
    # bounds, which ingest clamps. Most go above the upper bound, a few below the lower.
    beyond = rng.random(contacts) < _BEYOND_BOUNDS_SHARE
    excess = rng.integers(1, span // 2 + 2, size=contacts)
    below = rng.random(contacts) < 0.2
    values = np.where(beyond & ~below, measure.upper + excess, values)
    values = np.where(beyond & below, measure.lower - excess, values)
    return values
