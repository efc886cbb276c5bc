"""Generate CustomResourceDefinitions from the API models: the models are the one source of truth.

pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: no ``$ref``, no
``anyOf`` for optional fields, no ``title``, every object typed. This module walks pydantic's
schema, inlines references, drops what Kubernetes refuses, and keeps descriptions, enums, bounds,
defaults and the CEL rules (``x-kubernetes-validations``) that the models carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from plunder.api.base import Resource
from plunder.api.infrastructure import (
    PlunderCluster,
    PlunderClusterTemplate,
    PlunderMachine,
    PlunderMachineTemplate,
)
from plunder.api.inventory import PlunderHost
from plunder.api.remediation import PlunderRemediation, PlunderRemediationTemplate

ALL_KINDS: tuple[type[Resource], ...] = (
    PlunderCluster,
    PlunderClusterTemplate,
    PlunderMachine,
    PlunderMachineTemplate,
    PlunderRemediation,
    PlunderRemediationTemplate,
    PlunderHost,
)

JSONSchema = dict[str, Any]

# JSON Schema keywords that survive into the structural schema as they are.
_KEPT_KEYWORDS = (
    "type",
    "description",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
    "x-kubernetes-validations",
)


def _resolve(schema: JSONSchema, definitions: Mapping[str, JSONSchema]) -> JSONSchema:
    """Inline a ``$ref`` (and pydantic's ``allOf: [$ref]``), keeping the referring description."""
    ref_holder = schema
    if "allOf" in schema and len(schema["allOf"]) == 1:
        ref_holder = schema["allOf"][0]
    if "$ref" not in ref_holder:
        return schema
    target = definitions[ref_holder["$ref"].rsplit("/", 1)[-1]]
    merged = dict(target)
    for key, value in schema.items():
        if key not in ("$ref", "allOf"):
            merged[key] = value
    # The model's own rules hold wherever it is used; a field adds its rules to them.
    if "x-kubernetes-validations" in target and "x-kubernetes-validations" in schema:
        merged["x-kubernetes-validations"] = [
            *target["x-kubernetes-validations"],
            *schema["x-kubernetes-validations"],
        ]
    return merged


def _without_null(schema: JSONSchema) -> JSONSchema:
    """Optional fields are ``anyOf: [X, null]`` in JSON Schema; in Kubernetes, just X."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    not_null = [option for option in options if option.get("type") != "null"]
    if len(not_null) != 1:
        raise ValueError(f"a union cannot be expressed in a structural schema: {options}")
    merged = dict(not_null[0])
    for key, value in schema.items():
        if key != "anyOf":
            merged[key] = value
    return merged


def _one_paragraph(docstring: str) -> str:
    """Docstrings wrap at 100 columns; ``kubectl explain`` wraps by itself."""
    return " ".join(docstring.replace("``", "'").split())


def to_structural(schema: JSONSchema, definitions: Mapping[str, JSONSchema]) -> JSONSchema:
    """Turn one pydantic JSON Schema node into a Kubernetes structural schema node."""
    schema = _without_null(_resolve(_without_null(schema), definitions))
    schema = _resolve(schema, definitions)
    out: JSONSchema = {key: schema[key] for key in _KEPT_KEYWORDS if key in schema}
    if "description" in out:
        out["description"] = _one_paragraph(out["description"])
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if schema.get("default") is not None and not isinstance(schema["default"], dict | list):
        out["default"] = schema["default"]
    if schema.get("type") == "integer":
        out.setdefault("format", "int64")
    if "properties" in schema:
        out["type"] = "object"
        out["properties"] = {
            name: to_structural(prop, definitions) for name, prop in schema["properties"].items()
        }
        required = [name for name in schema.get("required", ()) if name in out["properties"]]
        if required:
            out["required"] = required
    elif schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_structural(schema["additionalProperties"], definitions)
    if out.get("type") == "object" and "maxLength" in out:
        # pydantic writes a bounded map's max_length as maxLength when the map is optional.
        out["maxProperties"] = out.pop("maxLength")
    if schema.get("type") == "array":
        out["items"] = to_structural(schema["items"], definitions)
        if "maxItems" not in out and "maxLength" in schema:
            out["maxItems"] = schema["maxLength"]
    return out


def resource_schema(kind: type[Resource]) -> JSONSchema:
    """The openAPIV3Schema of one kind, with apiVersion, kind and metadata."""
    full = kind.model_json_schema(by_alias=True, mode="validation")
    definitions = full.get("$defs", {})
    structural = to_structural(full, definitions)
    properties = {
        "apiVersion": {
            "type": "string",
            "description": f"The versioned schema of this object: {kind.info.api_version}.",
        },
        "kind": {"type": "string", "description": f"The kind of this object: {kind.info.kind}."},
        "metadata": {"type": "object"},
    }
    # metadata's schema is the API server's own; the model only reads it.
    properties.update(
        {name: prop for name, prop in structural["properties"].items() if name != "metadata"}
    )
    schema: JSONSchema = {
        "type": "object",
        "description": _one_paragraph(structural.get("description", kind.info.kind)),
        "properties": properties,
    }
    if "required" in structural:
        schema["required"] = structural["required"]
    return schema


def custom_resource_definition(kind: type[Resource]) -> JSONSchema:
    """The whole CustomResourceDefinition of one kind."""
    info = kind.info
    version: JSONSchema = {
        "name": info.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": resource_schema(kind)},
    }
    if info.has_status:
        version["subresources"] = {"status": {}}
    if info.printer_columns:
        version["additionalPrinterColumns"] = [
            {
                "name": column.name,
                "type": column.type,
                "jsonPath": column.json_path,
                **({"description": column.description} if column.description else {}),
                **({"priority": column.priority} if column.priority else {}),
            }
            for column in info.printer_columns
        ]
    names: JSONSchema = {
        "kind": info.kind,
        "listKind": f"{info.kind}List",
        "plural": info.plural,
        "singular": info.kind.lower(),
    }
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    if info.categories:
        names["categories"] = list(info.categories)
    metadata: JSONSchema = {"name": info.crd_name}
    if info.labels:
        metadata["labels"] = dict(info.labels)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": {
            "group": info.group,
            "names": names,
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crd_file_name(kind: type[Resource]) -> str:
    """The file name kubebuilder projects use: ``<group>_<plural>.yaml``."""
    return f"{kind.info.group}_{kind.info.plural}.yaml"


def render(crd: JSONSchema) -> str:
    """One CRD as YAML, stable from run to run."""
    return yaml.safe_dump(crd, sort_keys=False, width=100)


def render_all(kinds: Iterable[type[Resource]] = ALL_KINDS) -> str:
    """Every CRD as one multi-document YAML stream (what ``plunderctl crds`` prints)."""
    return "---\n".join(render(custom_resource_definition(kind)) for kind in kinds)
