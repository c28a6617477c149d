"""Load and validate a policy directory into one immutable ``PolicySet``.

A policy set is all or nothing: every file under ``datasets/`` and ``partners/`` must validate,
and every grant must fit the dataset it names, or ``load_policies`` raises ``PolicySetError``
listing every defect as ``file:field: reason``. A half-loaded set could grant a partner budget
against a dataset whose own bounds failed to load, so the caller keeps its last good set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from marshmallow import ValidationError

from service.policy.errors import PolicyError, PolicySetError
from service.policy.fields import describe
from service.policy.model import BUDGET_UNITS, DatasetPolicy, PartnerPolicy, PolicySet
from service.policy.schemas import DatasetSchema, PartnerFile, PartnerSchema

POLICY_KINDS = ("datasets", "partners")


class PolicyYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars and no duplicate keys.

    YAML 1.1, PyYAML's default, reads ``NO`` (Norway's jurisdiction, a country value) as
    false and ``1e-7`` (a delta) as a string; YAML 1.2 reads them as a string and a number,
    as a DPO expects. A duplicate key would silently keep only its last value, so a second
    ``epsilon:`` could raise a budget unnoticed; it is an error instead.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key '{key}'",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML_1_1_SCALAR_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}
PolicyYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_1_1_SCALAR_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
PolicyYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
PolicyYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
    list("-+0123456789"),
)
PolicyYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+"
        r"|\.[0-9]+[eE][-+]?[0-9]+)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def load_policies(directory: Path) -> PolicySet:
    """Read ``directory/datasets/*.yaml`` and ``directory/partners/*.yaml`` into a PolicySet.

    Raises ``PolicySetError`` listing every defect of the set (never a partial set). The
    version is ``sha256:`` over the sorted relative paths and bytes of the files read, so it
    changes exactly when a policy file's content, name, presence or absence changes.
    """
    if not directory.is_dir():
        raise PolicySetError([PolicyError(".", "", f"policy directory {directory} does not exist")])
    errors: list[PolicyError] = []
    contents: dict[str, bytes] = {}
    for kind in POLICY_KINDS:
        folder = directory / kind
        if not folder.is_dir():
            errors.append(PolicyError(kind, "", "directory is missing"))
            continue
        for stray in sorted(folder.glob("*.yml")):
            errors.append(PolicyError(f"{kind}/{stray.name}", "", "policy files must end in .yaml"))
        paths = sorted(path for path in folder.glob("*.yaml") if path.is_file())
        if kind == "datasets" and not paths:
            errors.append(PolicyError(kind, "", "no dataset policies (*.yaml) found"))
        for path in paths:
            relative = f"{kind}/{path.name}"
            try:
                contents[relative] = path.read_bytes()
            except OSError as error:
                errors.append(PolicyError(relative, "", f"cannot read: {error.strerror}"))

    datasets: dict[str, DatasetPolicy] = {}
    broken_datasets: set[str] = set()
    partner_files: list[PartnerFile] = []
    for relative, content in sorted(contents.items()):
        document = _parse(relative, content, errors)
        stem = Path(relative).stem
        is_dataset = relative.startswith("datasets/")
        if document is None:
            if is_dataset:
                broken_datasets.add(stem)
            continue
        try:
            if is_dataset:
                dataset = DatasetSchema(source=relative).load(document)
                datasets[dataset.id] = dataset
            else:
                partner_files.append(PartnerSchema(source=relative).load(document))
        except ValidationError as error:
            errors.extend(
                PolicyError(relative, field, reason) for field, reason in _flatten(error.messages)
            )
            if is_dataset:
                broken_datasets.add(stem)

    partners: dict[str, PartnerPolicy] = {}
    for partner_file in partner_files:
        if (directory / "datasets").is_dir():
            # Without a datasets directory every grant would be "unknown": one error is enough.
            errors.extend(_check_grants(partner_file, datasets, broken_datasets))
        partners[partner_file.policy.id] = partner_file.policy

    if errors:
        raise PolicySetError(errors)
    return PolicySet(
        datasets=MappingProxyType(dict(sorted(datasets.items()))),
        partners=MappingProxyType(dict(sorted(partners.items()))),
        version=_version(contents),
    )


def _parse(relative: str, content: bytes, errors: list[PolicyError]) -> Mapping[str, Any] | None:
    """The top-level mapping of one file, or None after recording why there is none."""
    try:
        # PolicyYamlLoader subclasses yaml.SafeLoader: no arbitrary object construction.
        document = yaml.load(content, Loader=PolicyYamlLoader)  # noqa: S506
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        errors.append(PolicyError(relative, "", f"invalid YAML{where}: {error.problem}"))
        return None
    except (yaml.YAMLError, ValueError) as error:
        # ValueError: a well-formed scalar that is no real value, e.g. the date 2027-06-31.
        errors.append(PolicyError(relative, "", f"invalid YAML: {error}"))
        return None
    if document is None:
        errors.append(PolicyError(relative, "", "file is empty"))
        return None
    if not isinstance(document, Mapping):
        errors.append(
            PolicyError(
                relative, "", f"top level must be a mapping of fields, not {describe(document)}"
            )
        )
        return None
    return document


def _flatten(messages: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted field path, reason) pairs from marshmallow's nested error messages."""
    if isinstance(messages, Mapping):
        for key, nested in messages.items():
            yield from _flatten(nested, path if key == "_schema" else (*path, str(key)))
    elif isinstance(messages, list):
        for message in messages:
            yield from _flatten(message, path)
    else:
        yield ".".join(path), str(messages)


def _check_grants(
    partner_file: PartnerFile, datasets: Mapping[str, DatasetPolicy], broken: set[str]
) -> Iterator[PolicyError]:
    """Defects of a partner's grants that only the datasets they name can reveal."""
    source = partner_file.policy.source
    for index, (grant, unit) in enumerate(
        zip(partner_file.policy.grants, partner_file.units, strict=True)
    ):
        at = f"grants.{index}"
        if grant.dataset in broken:
            # The dataset's own errors are already listed; its grants cannot be judged.
            continue
        dataset = datasets.get(grant.dataset)
        if dataset is None:
            known = ", ".join(sorted(datasets)) or "(none)"
            yield PolicyError(
                source, f"{at}.dataset", f"unknown dataset '{grant.dataset}'; known: {known}"
            )
            continue
        expected = BUDGET_UNITS[dataset.definition]
        if unit != expected:
            yield PolicyError(
                source,
                f"{at}.budget",
                f"{dataset.id} is a {dataset.definition} dataset counted in {expected}, not {unit}",
            )
        declared = {dimension.name for dimension in dataset.dimensions}
        unknown = sorted(grant.dimensions - declared)
        if unknown:
            yield PolicyError(
                source,
                f"{at}.dimensions",
                f"{dataset.id} has no dimension {', '.join(repr(name) for name in unknown)}; "
                f"it has {', '.join(dimension.name for dimension in dataset.dimensions)}",
            )
        needs_measure = sorted(grant.statistics & {"sum", "mean"})
        if needs_measure and not dataset.measures:
            yield PolicyError(
                source,
                f"{at}.statistics",
                f"{' and '.join(repr(name) for name in needs_measure)} "
                f"{'needs' if len(needs_measure) == 1 else 'need'} a measure, "
                f"and {dataset.id} declares none",
            )


def _version(contents: Mapping[str, bytes]) -> str:
    """sha256 over (relative path, bytes) of every file, length-prefixed to be unambiguous."""
    digest = hashlib.sha256()
    for relative, content in sorted(contents.items()):
        name = relative.encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return "sha256:" + digest.hexdigest()
