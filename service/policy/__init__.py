"""Dataset and partner policies: loading and validating the YAML files, and checking grants.

The rest of the service reads policies through ``service.policy.model`` and asks
``check_grant`` whether a query is allowed; the YAML format stays inside this package.
"""

from service.policy.errors import PolicyError, PolicySetError, PolicyViolation
from service.policy.grants import check_grant
from service.policy.loader import load_policies
from service.policy.model import (
    DatasetPolicy,
    Dimension,
    Grant,
    Measure,
    PartnerPolicy,
    PolicySet,
)

__all__ = [
    "DatasetPolicy",
    "Dimension",
    "Grant",
    "Measure",
    "PartnerPolicy",
    "PolicyError",
    "PolicySet",
    "PolicySetError",
    "PolicyViolation",
    "check_grant",
    "load_policies",
]
