"""lightkube resource classes for our kinds, made from the API models' ``info``."""

from __future__ import annotations

from functools import cache
from typing import Any

from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from plunder.api.base import Resource


def as_dict(obj: Any) -> dict[str, Any]:
    """A lightkube object as the plain dict the API sent (what our models validate)."""
    raw: dict[str, Any] = obj.to_dict()
    return raw


@cache
def resource_for(kind: type[Resource]) -> type[GenericNamespacedResource]:
    """The lightkube resource class of one of our kinds (one class per kind, made once)."""
    info = kind.info
    return create_namespaced_resource(info.group, info.version, info.kind, info.plural)
