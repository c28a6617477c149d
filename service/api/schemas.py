"""Marshmallow schemas of the HTTP API; flask-smorest builds the OpenAPI document from them.

One module for the whole published contract, so that a partner's view of it (requests,
releases down to their rows and intervals, problems) can be read in one place; that is why
it is longer than the others.
"""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema, fields, validate

from service.api.cursors import MAX_SEQ, AuditCursor, ReleaseCursor
from service.policy.model import DEFINITIONS, STATISTICS


class ProblemSchema(Schema):
    """RFC 7807 problem details; ``code`` is stable, the other members are for people."""

    type = fields.String(metadata={"example": "https://dpx.invalid/problems/budget_exhausted"})
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    code = fields.String(
        metadata={
            "description": "stable error code",
            "enum": [
                "invalid_request",
                "unauthenticated",
                "forbidden",
                "not_found",
                "budget_exhausted",
                "payload_too_large",
                "rate_limited",
                "conflict",
                "integrity_error",
                "unavailable",
                "internal_error",
            ],
            "example": "forbidden",
        }
    )
    request_id = fields.String(metadata={"description": "names this request in the server log"})
    errors = fields.List(
        fields.Raw(),
        metadata={
            "description": "invalid_request: one message per bad field, or for an upload the "
            "rejected rows as {row, column, reason}"
        },
    )
    field = fields.String(metadata={"description": "invalid_request (400): the field at fault"})
    rule = fields.String(metadata={"description": "forbidden: the policy rule that refused"})
    remaining = fields.Dict(
        metadata={
            "description": "budget_exhausted: what the partner's grant and the dataset's global "
            "budget have left",
            "example": {"partner": {"epsilon": 0.1}, "dataset": {"epsilon": 6.0}},
        }
    )
    total_rejected = fields.Integer(metadata={"description": "upload: rows rejected in all"})
    checks = fields.Dict(metadata={"description": "unavailable (503): each readiness check"})
    marginals = fields.List(
        fields.List(fields.String()),
        metadata={"description": "not_in_synopsis (400): the marginals the synopsis declares"},
    )


class DimensionSchema(Schema):
    name = fields.String()
    kind = fields.String(metadata={"description": "month or categorical"})
    values = fields.List(fields.String(), metadata={"description": "the public domain"})


class MeasureSchema(Schema):
    name = fields.String()
    min = fields.Integer(attribute="lower")
    max = fields.Integer(attribute="upper")


class GrantSchema(Schema):
    budget = fields.Float()
    max_per_query = fields.Float(allow_none=True)
    statistics = fields.List(fields.String())
    dimensions = fields.List(fields.String())
    expires = fields.Date(allow_none=True)
    spent = fields.Float()
    remaining = fields.Float()


class PrivacyUnitSchema(Schema):
    definition = fields.String(metadata={"example": "pure"})
    unit = fields.String(metadata={"example": "person"})
    max_contacts_per_person = fields.Integer()
    max_contacts_per_cell = fields.Integer(allow_none=True)
    delta = fields.Float(allow_none=True)
    budget_unit = fields.String(metadata={"example": "epsilon"})
    global_budget = fields.Float()
    global_remaining = fields.Float()
    share_releases = fields.Boolean()


class DatasetSchema(Schema):
    id = fields.String(metadata={"example": "uk-helpline-2024"})
    title = fields.String()
    owner = fields.String()
    privacy = fields.Nested(PrivacyUnitSchema)
    dimensions = fields.List(fields.Nested(DimensionSchema))
    measures = fields.List(fields.Nested(MeasureSchema))
    grant = fields.Nested(GrantSchema, allow_none=True)
    synopsis = fields.Dict(
        allow_none=True,
        metadata={
            "description": "the declared marginals, budget and newest build (synopsis_id, "
            "built_at, cost, stale), or null when the dataset declares none"
        },
    )


class DatasetListSchema(Schema):
    datasets = fields.List(fields.Nested(DatasetSchema))


class UploadArgsSchema(Schema):
    form = fields.String(
        load_default="contacts",
        validate=validate.OneOf(["contacts", "cells"]),
        metadata={
            "description": "contacts: one row per contact; "
            "cells: pre-aggregated rows with a contacts column"
        },
    )
    allow_duplicate = fields.Boolean(
        load_default=False,
        metadata={
            "description": "store the upload even when a stored batch of the dataset holds "
            "exactly the same bytes (otherwise 409 duplicate_batch)"
        },
    )


class BatchSchema(Schema):
    batch_id = fields.String(metadata={"example": "bat_3f2a…"})
    dataset = fields.String()
    form = fields.String()
    rows = fields.Integer()
    contacts = fields.Integer()
    cells = fields.Integer()
    truncated = fields.Integer(
        metadata={
            "description": "contacts of this batch dropped by the person bounds "
            "(max_contacts_per_person, max_contacts_per_cell), counting what each person "
            "contributed in earlier batches of the dataset: first contacts are kept. "
            "Always 0 without a person column and for form=cells"
        }
    )
    clamped = fields.Integer(metadata={"description": "measure values clamped to their bounds"})
    created_at = fields.DateTime()


class AccuracyTargetSchema(Schema):
    max_error = fields.Float(required=True, allow_nan=False)
    alpha = fields.Float(allow_nan=False)


class QuerySchema(Schema):
    dataset = fields.String(required=True, metadata={"example": "uk-helpline-2024"})
    statistic = fields.String(required=True, validate=validate.OneOf(STATISTICS))
    measure = fields.String(
        metadata={
            "description": "the measure to sum or average: required for sum and mean, "
            "absent for count"
        }
    )
    group_by = fields.List(fields.String(), metadata={"example": ["month"]})
    filters = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        metadata={
            "description": "dimension -> list of values; a month dimension also takes "
            '{"from": "2024-01", "to": "2024-06"}',
            "example": {"channel": ["chat"]},
        },
    )
    epsilon = fields.Float(allow_nan=False, metadata={"example": 0.5})
    rho = fields.Float(allow_nan=False)
    accuracy = fields.Nested(AccuracyTargetSchema)
    alpha = fields.Float(allow_nan=False, metadata={"example": 0.05})
    source = fields.String(
        validate=validate.OneOf(["synopsis"]),
        metadata={
            "description": "synopsis: answer free from the dataset's newest synopsis (give no "
            "cost); 4xx not_in_synopsis or no_synopsis when it cannot"
        },
    )


class _AsComputed(Schema):
    """A schema that documents a release-shaped answer and returns it as it was computed.

    A release is signed: the partner verifies the very members and numbers the service
    signed, so marshmallow must not render them again (a ``Float`` would turn a count of
    412 into 412.0, and a missed member would vanish). Dumping keeps the members this
    schema declares, each with its value as computed; the nested schemas only describe.
    """

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        # The members this schema declares, as computed: nothing is serialised again (which
        # also spares every answer a walk over all its rows).
        if self.many if many is None else many:
            return [self.dump(item, many=False) for item in obj]
        return {name: obj[name] for name in self.fields if name in obj}


_AMOUNT = {
    "description": "in the dataset's budget unit (epsilon or rho), as an exact decimal",
    "example": {"epsilon": "0.2"},
}


class AccuracyCapSchema(Schema):
    max_error = fields.Float(metadata={"example": 50})


class QueryPrivacySchema(Schema):
    """The cost a query asked for: exactly one member."""

    epsilon = fields.String(metadata={"description": "exact decimal", "example": "0.2"})
    rho = fields.String(metadata={"description": "exact decimal"})
    accuracy = fields.Nested(
        AccuracyCapSchema, metadata={"description": "the cheapest cost that keeps this accuracy"}
    )
    source = fields.String(
        validate=validate.OneOf(["synopsis"]),
        metadata={"description": "answered free from a synopsis"},
    )


class CanonicalQuerySchema(Schema):
    """The question in canonical form: the same question always reads the same."""

    dataset = fields.String(metadata={"example": "uk-helpline-2024"})
    statistic = fields.String(validate=validate.OneOf(STATISTICS))
    measure = fields.String(allow_none=True)
    group_by = fields.List(fields.String(), metadata={"example": ["month"]})
    filters = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "dimension -> the values kept, in policy order"},
    )
    privacy = fields.Nested(QueryPrivacySchema)
    alpha = fields.Float(metadata={"example": 0.05})
    source = fields.String(
        validate=validate.OneOf(["synopsis"]),
        metadata={"description": "present when answered free from a synopsis"},
    )


class ResultRowSchema(Schema):
    """One cell of a release: its group-by values, the noisy value and its interval."""

    class Meta:
        # The group-by dimensions are members too, one string each, named by the query.
        unknown = INCLUDE

    value = fields.Float(metadata={"description": "the noisy value", "example": 412})
    ci = fields.List(
        fields.Float(),
        validate=validate.Length(equal=2),
        metadata={
            "description": "[low, high]: the interval that holds the true value at "
            "confidence 1 - alpha",
            "example": [352, 472],
        },
    )


class ReleasePrivacySchema(Schema):
    """What the answer cost: numbers for people, ``cost`` exactly for accounting."""

    definition = fields.String(validate=validate.OneOf(DEFINITIONS))
    epsilon = fields.Float(metadata={"description": "for zcdp: the epsilon at the dataset's delta"})
    delta = fields.Float()
    rho = fields.Float(metadata={"description": "zcdp only"})
    cost = fields.Dict(keys=fields.String(), values=fields.String(), metadata=_AMOUNT)


class MechanismPartSchema(Schema):
    """One of a mean's two measurements (its sum and its count)."""

    scale = fields.Float()
    sensitivity = fields.Float()
    cost = fields.Dict(keys=fields.String(), values=fields.String(), metadata=_AMOUNT)


class MechanismSchema(Schema):
    """The noise: one mechanism, or for a synopsis answer the synopsis' measurements."""

    name = fields.String(
        metadata={
            "description": "discrete_laplace, discrete_gaussian, or synopsis",
            "example": "discrete_laplace",
        }
    )
    scale = fields.Float(metadata={"description": "for a mean: the sum's"})
    sensitivity = fields.Float(metadata={"description": "for a mean: the sum's"})
    components = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(MechanismPartSchema),
        metadata={"description": "a mean only: its sum and count measurements"},
    )
    measurements = fields.String(
        metadata={"description": "synopsis only: the mechanism the synopsis was measured with"}
    )
    estimator = fields.String(
        metadata={"description": "synopsis only: how the answer is read from the synopsis"}
    )


class AccuracyPartSchema(Schema):
    alpha = fields.Float()
    max_error = fields.Float()


class AccuracySchema(Schema):
    alpha = fields.Float(metadata={"example": 0.05})
    max_error = fields.Float(
        allow_none=True,
        metadata={
            "description": "how far any value's interval reaches from the value (its "
            "half-width, but for a synopsis answer, whose interval need not be centred on "
            "it); null for a mean, whose interval is given per value"
        },
    )
    components = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(AccuracyPartSchema),
        metadata={"description": "a mean only: the accuracy of its sum and of its count"},
    )


_REMAINING = {"description": "budget unit -> what is left", "example": {"epsilon": 1.8}}


class RemainingBudgetSchema(Schema):
    """What the caller's grant and the dataset's global budget have left (not signed)."""

    partner_remaining = fields.Dict(
        keys=fields.String(), values=fields.Float(), metadata=_REMAINING
    )
    dataset_remaining = fields.Dict(
        keys=fields.String(), values=fields.Float(), metadata=_REMAINING
    )


class ReleaseSourceSchema(Schema):
    synopsis = fields.String(metadata={"description": "the synopsis id", "example": "syn_…"})


class SignatureSchema(Schema):
    """Ed25519 over the canonical JSON of the release less its unsigned members."""

    alg = fields.String(metadata={"example": "Ed25519"})
    key_id = fields.String()
    value = fields.String(metadata={"description": "base64 Ed25519 signature"})


class ReleaseSchema(_AsComputed):
    release_id = fields.String(metadata={"example": "rel_…"})
    dataset = fields.String()
    partner = fields.String()
    cached = fields.Boolean(metadata={"description": "not signed; only in the answer to a query"})
    query = fields.Nested(CanonicalQuerySchema)
    rows = fields.List(
        fields.Nested(ResultRowSchema),
        metadata={
            "description": "one per cell of the whole domain: a string member per group_by "
            "dimension, then value and ci",
            "example": [{"month": "2024-01", "value": 412, "ci": [352, 472]}],
        },
    )
    privacy = fields.Nested(ReleasePrivacySchema)
    mechanism = fields.Nested(MechanismSchema)
    accuracy = fields.Nested(AccuracySchema)
    budget = fields.Nested(
        RemainingBudgetSchema, metadata={"description": "not signed; only in the answer to a query"}
    )
    source = fields.Nested(
        ReleaseSourceSchema, metadata={"description": "present when answered free from a synopsis"}
    )
    policy_version = fields.String()
    created_at = fields.String(metadata={"example": "2026-03-02T10:15:00Z"})
    signature = fields.Nested(SignatureSchema)


_NEXT = {
    "description": "pass as `cursor` to get the next page (also in the `Link` header); "
    "null on the last page"
}


class ReleaseListSchema(Schema):
    releases = fields.List(fields.Nested(ReleaseSchema))
    next = fields.String(allow_none=True, metadata=_NEXT)


class ReleaseListArgsSchema(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = ReleaseCursor(
        metadata={"description": "the `next` of the previous page; omit for the newest"}
    )


class EstimateSchema(_AsComputed):
    dataset = fields.String()
    query = fields.Nested(CanonicalQuerySchema)
    cached = fields.Boolean(
        metadata={
            "description": "true: an identical release exists, so "
            "running the query returns it and costs nothing "
            "(privacy then shows a zero cost)"
        }
    )
    privacy = fields.Nested(ReleasePrivacySchema)
    mechanism = fields.Nested(MechanismSchema)
    accuracy = fields.Nested(AccuracySchema)
    budget = fields.Nested(RemainingBudgetSchema)
    source = fields.String(
        validate=validate.OneOf(["synopsis", "direct"]),
        metadata={
            "description": "synopsis: answered free from the synopsis named under synopsis; "
            "direct: charged as a fresh release",
            "example": "direct",
        },
    )
    synopsis = fields.String(metadata={"description": "the synopsis id, when source is synopsis"})


class BudgetSchema(Schema):
    partner = fields.String()
    dataset = fields.String()
    unit = fields.String()
    granted = fields.Float()
    spent = fields.Float()
    remaining = fields.Float()
    expires = fields.String(allow_none=True)
    dataset_global = fields.Float()
    dataset_spent = fields.Float()
    dataset_remaining = fields.Float()


class BudgetListSchema(Schema):
    budgets = fields.List(fields.Nested(BudgetSchema))


class SigningKeySchema(Schema):
    key_id = fields.String()
    alg = fields.String()
    public_key = fields.String(metadata={"description": "base64 of the raw 32-byte key"})
    status = fields.String(metadata={"description": "current or retired"})


class SigningKeyListSchema(Schema):
    keys = fields.List(fields.Nested(SigningKeySchema))


class AuditEntrySchema(Schema):
    seq = fields.Integer()
    at = fields.String()
    actor = fields.String()
    action = fields.String()
    dataset = fields.String(allow_none=True)
    details = fields.Dict()
    mac = fields.String()


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema))
    next_after = fields.Integer(
        allow_none=True, metadata={"description": "the last seq of this page, if more follow"}
    )
    next = fields.String(allow_none=True, metadata=_NEXT)


class AuditArgsSchema(Schema):
    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_SEQ),
        metadata={"description": "list entries after this sequence number"},
    )
    cursor = AuditCursor(
        metadata={"description": "the `next` of the previous page (instead of `after`)"}
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})
    checks = fields.Dict()


# Examples shown in the OpenAPI document (synthetic values, shaped like real answers).

QUERY_EXAMPLES = {
    "count_by_month": {
        "summary": "Contacts referred by police warnings, per month, at epsilon 0.2",
        "value": {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month"],
            "filters": {"referral_source": ["police_warning"]},
            "epsilon": 0.2,
        },
    },
    "month_range": {
        "summary": "Chat contacts in the first half year, per month",
        "value": {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month"],
            "filters": {"channel": ["chat"], "month": {"from": "2024-01", "to": "2024-06"}},
            "epsilon": 0.5,
        },
    },
    "accuracy_target": {
        "summary": "The cheapest cost that keeps every value within 50 at 95% confidence",
        "value": {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["channel"],
            "accuracy": {"max_error": 50, "alpha": 0.05},
        },
    },
    "zcdp_mean": {
        "summary": "Mean minutes per contact on a zCDP dataset, by channel",
        "value": {
            "dataset": "nl-helpline-2024",
            "statistic": "mean",
            "measure": "minutes",
            "group_by": ["channel"],
            "rho": 0.05,
        },
    },
}

_CANONICAL_QUERY = {
    "alpha": 0.05,
    "dataset": "uk-helpline-2024",
    "statistic": "count",
    "measure": None,
    "group_by": ["month"],
    "filters": {"referral_source": ["police_warning"]},
    "privacy": {"epsilon": "0.2"},
}

ESTIMATE_EXAMPLE = {
    "dataset": "uk-helpline-2024",
    "query": _CANONICAL_QUERY,
    "cached": False,
    "privacy": {"definition": "pure", "epsilon": 0.2, "delta": 0.0},
    "mechanism": {"name": "discrete_laplace", "scale": 50.0, "sensitivity": 10},
    "accuracy": {"alpha": 0.05, "max_error": 150},
    "budget": {"partner_remaining": {"epsilon": 2.0}, "dataset_remaining": {"epsilon": 8.0}},
}

RELEASE_EXAMPLE = {
    "release_id": "rel_69b95595d204eff302ba",
    "dataset": "uk-helpline-2024",
    "partner": "no-police",
    "cached": False,
    "query": _CANONICAL_QUERY,
    "rows": [
        {"month": "2024-01", "value": 412, "ci": [262, 562]},
        {"month": "2024-02", "value": 388, "ci": [238, 538]},
    ],
    "privacy": {"definition": "pure", "epsilon": 0.2, "delta": 0.0},
    "mechanism": {"name": "discrete_laplace", "scale": 50.0, "sensitivity": 10},
    "accuracy": {"alpha": 0.05, "max_error": 150},
    "budget": {"partner_remaining": {"epsilon": 1.8}, "dataset_remaining": {"epsilon": 7.8}},
    "policy_version": "sha256:462a38d29be3a828…",
    "created_at": "2026-03-02T10:15:00Z",
    "signature": {
        "alg": "Ed25519",
        "key_id": "sig-9c500a66",
        "value": "qWBvRoRZp16iyHiD7joocObvI7OKW1thUt8ix2313I0PMk1h26qa1YlA6k034Q…",
    },
}

CSV_UPLOAD_EXAMPLE = (
    "month,country,channel,caller_type,referral_source,minutes,person\n"
    "2024-01,GB,chat,self_concerned,social_media_ad,15,synthetic-0000124\n"
    "2024-01,IE,phone,family_friend,police_warning,40,synthetic-0000695\n"
)
