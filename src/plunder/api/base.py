"""The base of every API model, and how a model says what its CRD looks like.

Each resource is a pydantic model; its field docstrings become the CRD's field descriptions
(``kubectl explain``), and validation that Kubernetes must enforce is attached as CEL rules
(``x-kubernetes-validations``) with messages that name the field. The same models parse what the
controllers read back from the API, so the schema and the code cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

if TYPE_CHECKING:
    from plunder.api.rules import Rule


class KubeModel(BaseModel):
    """A part of a Kubernetes object: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    object_rules: ClassVar[tuple[Rule, ...]] = ()
    """Rules on the whole object (across its fields): CEL in the CRD, checked here too."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The model's schema, with its ``object_rules`` as CEL."""
        json_schema = handler(schema)
        if cls.object_rules:
            target = handler.resolve_ref_schema(json_schema)
            existing = list(target.get("x-kubernetes-validations", []))
            target["x-kubernetes-validations"] = existing + [
                r.validation() for r in cls.object_rules
            ]
        return json_schema

    @model_validator(mode="after")
    def _hold_rules(self) -> Self:
        for rule in type(self).object_rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def to_api(self) -> dict[str, Any]:
        """Serialise as the API server expects it: aliases, and no unset (None) fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """Build one CEL validation rule for ``x-kubernetes-validations``."""
    validation = {"rule": rule, "message": message}
    if field_path is not None:
        validation["fieldPath"] = field_path
    return validation


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """The ``json_schema_extra`` that attaches CEL rules to a field or a model."""
    return {"x-kubernetes-validations": list(rules)}


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceInfo:
    """What a CRD needs beyond the schema: names, group, version, labels, columns."""

    group: str
    version: str
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    printer_columns: tuple[PrinterColumn, ...] = ()
    has_status: bool = True

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of objects of this kind."""
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        """The CustomResourceDefinition's own name, ``<plural>.<group>``."""
        return f"{self.plural}.{self.group}"


class ObjectMeta(KubeModel):
    """The parts of Kubernetes' object metadata this code reads (the CRD leaves it to the API)."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


class Resource(KubeModel):
    """A top-level kind. Subclasses declare ``info`` and their ``spec``/``status`` fields."""

    info: ClassVar[ResourceInfo]

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
