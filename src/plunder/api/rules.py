"""Validation rules held twice from one definition: by the API server (CEL) and by the models.

A rule is a CEL expression for the CRD's ``x-kubernetes-validations``, the message a person sees
when it fails (naming the field and saying what to write instead), and the same check in Python,
which the pydantic models run. Writing each rule once keeps the two from drifting: a manifest
refused by ``kubectl apply`` is refused by the models with the same words, and a test table
(tests/schema_cases.py) runs every case through both.

The checks are written with regular expressions that mean the same in RE2 (CEL's ``matches``)
and in Python's ``re`` (plain classes, groups, alternation and counted repeats only), and with the
Kubernetes CEL IP library (``isIP``, ``ip().family()``), whose rules Python's ``ipaddress`` is
held to below. Rules that compare an object with its previous version (``oldSelf``) exist only in
the API server; their ``check`` is None.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from plunder.api.base import cel

# ----------------------------------------------------------------------- the rule and its uses


@dataclass(frozen=True)
class Rule:
    """One validation rule, for the API server and for the models.

    Attributes:
        expression: The CEL expression over ``self`` (and ``oldSelf`` for a transition rule).
        message: What a person reads when it fails: the field, and what to write instead.
        check: The same rule in Python; None for a transition rule, which only the API server
            can hold (it needs the object's previous version).
        field_path: For a rule on an object, the field the failure is reported on.
    """

    expression: str
    message: str
    check: Callable[[Any], bool] | None
    field_path: str | None = None

    def validation(self) -> dict[str, str]:
        """The rule as one item of ``x-kubernetes-validations``."""
        return cel(self.expression, self.message, field_path=self.field_path)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` passes the Python half (a transition rule always passes here)."""
        return self.check is None or self.check(value)


def first_failure(rules: tuple[Rule, ...], value: Any) -> str | None:
    """The message of the first rule ``value`` breaks, or None."""
    for rule in rules:
        if not rule.holds(value):
            return rule.message
    return None


def add_validations(json_schema: JsonSchemaValue, rules: tuple[Rule, ...]) -> JsonSchemaValue:
    """``json_schema`` with the rules' CEL added to its ``x-kubernetes-validations``."""
    if not rules:
        return json_schema
    if "$ref" in json_schema:
        # A field of a model type: the rules belong to this field, not to the shared model.
        json_schema = {"allOf": [json_schema]}
    existing = list(json_schema.get("x-kubernetes-validations", []))
    json_schema["x-kubernetes-validations"] = existing + [rule.validation() for rule in rules]
    return json_schema


class Enforce:
    """``Annotated`` metadata that puts rules on one field: CEL into the CRD, checks into pydantic.

    Example: ``secret: Annotated[str, Field(max_length=253), Enforce(*secret_name("spec.x"))]``.
    """

    def __init__(self, *rules: Rule) -> None:
        """Hold ``rules``, checked in order; the first that fails gives the error."""
        self.rules = rules

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        """Run the rules' Python checks after the field's own validation."""
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Add the rules' CEL to the field's schema."""
        return add_validations(handler(schema), self.rules)

    def _validate(self, value: Any) -> Any:
        message = first_failure(self.rules, value)
        if message is not None:
            raise ValueError(message)
        return value


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal (single-quoted, backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def matches(regex: str, text: str) -> bool:
    """CEL's ``text.matches(regex)``: RE2 finds the pattern anywhere unless it is anchored."""
    return re.search(regex, text) is not None


def is_ip(text: str) -> bool:
    """CEL's ``isIP``: an IPv4 or IPv6 address, without a zone and not IPv4-mapped IPv6."""
    if "%" in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None)


def ip_family(text: str) -> int:
    """CEL's ``ip(text).family()``: 4 or 6 (``text`` must be an address)."""
    return ipaddress.ip_address(text).version


# ----------------------------------------------------------------------- the grammar

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
"""One label of a DNS name: 1-63 lower-case letters, digits and '-', not starting or ending
with '-'."""
DNS_NAME = rf"^{DNS_LABEL}(\.{DNS_LABEL})*$"
NUMERIC_LAST_LABEL = r"(^|\.)[0-9]+$"
"""A name whose last label is all digits is no DNS name (no top-level domain is): it is an IPv4
address mistyped, like 300.1.1.1 or 10.0.0."""
SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A DNS-1123 subdomain: what Kubernetes takes as the name of a Secret (at most 253)."""
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1123 label: what Kubernetes takes as a namespace's name (at most 63)."""
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _LABEL_NAME + "$"
)
"""A label key: an optional DNS-subdomain prefix (at most 253) and '/', then a name of at most
63 characters."""
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
"""A label value: empty, or at most 63 characters, starting and ending with a letter or digit."""
PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
"""A TCP port, 1 to 65535, without leading zeros."""
IPV4 = (
    r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
)
MAC = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
"""A MAC address in the canonical form this project stores and looks up by."""

# A URL's start, up to its authority, and the characters that end an authority.
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*://"
_END = r"([/?#]|$)"
_URL_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_URL_HOST = (
    _SCHEME + r"(\[[^\]/?#@]*\]|" + _URL_LABEL + r"(\." + _URL_LABEL + r")*)(:[0-9]*)?" + _END
)
_URL_NUMERIC_HOST = _SCHEME + r"([^/?#@:\[\]]*\.)?[0-9]+(:[0-9]*)?" + _END
_URL_IPV4_HOST = _SCHEME + IPV4 + r"(:[0-9]*)?" + _END
_URL_BRACKETED = _SCHEME + r"\[[^\]/?#@]*\](:[0-9]*)?" + _END
_BRACKETS = r"\[[^\]]*\]"
_URL_HAS_PORT = _SCHEME + r"[^/?#@]*:[^\]/?#@]*" + _END
_URL_PORT = _SCHEME + r"[^/?#@]*:" + PORT + _END
_URL_CREDENTIALS = _SCHEME + r"[^/?#]*@"
_URL_BLANKS = r"[\x00-\x20\x7f]"
_URL_BAD_ESCAPE = r"%([^0-9A-Fa-f]|[0-9A-Fa-f][^0-9A-Fa-f]|[0-9A-Fa-f]?$)"


def _bracketed_ipv6(url: str) -> bool:
    found = re.search(_BRACKETS, url)
    inner = found.group(0)[1:-1] if found else ""
    return is_ip(inner) and ip_family(inner) == 6


# ----------------------------------------------------------------------- rules, by what they hold


def mac_address(path: str) -> tuple[Rule, ...]:
    """A boot NIC's MAC: canonical lower-case colon form, and unicast (a NIC's own address)."""
    return (
        Rule(
            f"self.matches({cel_string(MAC)})",
            f"{path} must be a MAC address in lower-case colon form, like 00:50:56:a5:11:20",
            lambda value: matches(MAC, value),
        ),
        Rule(
            "!self.matches('^.[13579bdf]') && self != '00:00:00:00:00:00'",
            f"{path} must be the unicast MAC address of the host's boot NIC: a multicast address "
            "(odd first octet, like 01:00:5e:00:00:01), the broadcast ff:ff:ff:ff:ff:ff and "
            "00:00:00:00:00:00 are never a NIC's",
            lambda value: not matches("^.[13579bdf]", value) and value != "00:00:00:00:00:00",
        ),
    )


def ip_address(path: str) -> Rule:
    """An IPv4 or IPv6 address, without a prefix length."""
    return Rule(
        "isIP(self)",
        f"{path} must be an IPv4 or IPv6 address, like 172.31.99.20",
        is_ip,
    )


def ip_addresses(path: str) -> Rule:
    """A list of IPv4 or IPv6 addresses."""
    return Rule(
        "self.all(n, isIP(n))",
        f"{path} must be IPv4 or IPv6 addresses",
        lambda values: all(is_ip(value) for value in values),
    )


def endpoint_host(path: str) -> Rule:
    """Empty (not yet known), an IP address, or a DNS name that is not a mistyped address."""
    return Rule(
        f"self == '' || isIP(self) || (self.matches({cel_string(DNS_NAME)})"
        f" && !self.matches({cel_string(NUMERIC_LAST_LABEL)}))",
        f"{path} must be an IP address (like 172.31.99.20 or fd00::20, without brackets) or a "
        "DNS name (lower-case labels of 1-63 letters, digits and '-', joined by dots, like "
        "cp.lab.example)",
        lambda value: (
            value == ""
            or is_ip(value)
            or (matches(DNS_NAME, value) and not matches(NUMERIC_LAST_LABEL, value))
        ),
    )


def url(path: str, example: str) -> tuple[Rule, ...]:
    """The parts of a URL's authority that must hold: a host that is one, a port that is one.

    The rules say nothing of the scheme or path (the field's own rule does), and hold only
    for text that starts with a scheme and '//'. Host and port are not checked where credentials
    are written: that rule has more to say.
    """
    return (
        Rule(
            f"!self.matches({cel_string(_URL_BLANKS)})",
            f"{path} must not contain spaces or control characters: percent-encode them "
            "(a space is %20)",
            lambda value: not matches(_URL_BLANKS, value),
        ),
        Rule(
            f"!self.matches({cel_string(_URL_CREDENTIALS)})",
            f"{path} must not carry credentials (user:password@): whoever may read this object "
            "would read them",
            lambda value: not matches(_URL_CREDENTIALS, value),
        ),
        Rule(
            f"!self.matches({cel_string(_URL_BAD_ESCAPE)})",
            f"{path} has a '%' that starts no percent-escape (two hex digits): write a '%' "
            "itself as %25",
            lambda value: not matches(_URL_BAD_ESCAPE, value),
        ),
        Rule(
            f"!self.matches({cel_string(_SCHEME)}) || self.matches({cel_string(_URL_CREDENTIALS)})"
            f" || self.matches({cel_string(_URL_HOST)})",
            f"{path} must name its host after '//': a DNS name, an IPv4 address or an IPv6 "
            f"address in brackets, like {example}",
            lambda value: (
                not matches(_SCHEME, value)
                or matches(_URL_CREDENTIALS, value)
                or matches(_URL_HOST, value)
            ),
        ),
        Rule(
            f"!self.matches({cel_string(_URL_NUMERIC_HOST)})"
            f" || self.matches({cel_string(_URL_IPV4_HOST)})",
            f"{path} names a host that is no IPv4 address: write four numbers from 0 to 255 "
            "(like 172.31.99.1); a DNS name does not end in a number",
            lambda value: not matches(_URL_NUMERIC_HOST, value) or matches(_URL_IPV4_HOST, value),
        ),
        Rule(
            f"!self.matches({cel_string(_URL_BRACKETED)})"
            f" || isIP(self.find({cel_string(_BRACKETS)}).substring(1,"
            f" self.find({cel_string(_BRACKETS)}).size() - 1))"
            f" && ip(self.find({cel_string(_BRACKETS)}).substring(1,"
            f" self.find({cel_string(_BRACKETS)}).size() - 1)).family() == 6",
            f"{path} has a host in brackets that is no IPv6 address: brackets hold an IPv6 "
            "address (like [fd00::1]); write IPv4 addresses and names without them",
            lambda value: not matches(_URL_BRACKETED, value) or _bracketed_ipv6(value),
        ),
        Rule(
            f"!self.matches({cel_string(_URL_HAS_PORT)}) || self.matches({cel_string(_URL_PORT)})",
            f"{path} has a port out of range: give one from 1 to 65535, or leave ':port' out "
            "for the scheme's default",
            lambda value: not matches(_URL_HAS_PORT, value) or matches(_URL_PORT, value),
        ),
    )


def secret_name(path: str) -> Rule:
    """The name of a Secret: a DNS-1123 subdomain."""
    return Rule(
        f"self.matches({cel_string(SUBDOMAIN)})",
        f"{path} must be a Secret's name: lower-case letters, digits, '-' and '.', starting and "
        "ending with a letter or digit (a DNS-1123 subdomain, like bmc-node1)",
        lambda value: matches(SUBDOMAIN, value),
    )


def namespace_name(path: str) -> Rule:
    """The name of a namespace: a DNS-1123 label."""
    return Rule(
        f"self.matches({cel_string(DNS1123_LABEL)})",
        f"{path} must be a namespace's name: at most 63 lower-case letters, digits and '-', "
        "starting and ending with a letter or digit (a DNS-1123 label, like default)",
        lambda value: matches(DNS1123_LABEL, value),
    )


def _is_label_key(key: str) -> bool:
    return matches(LABEL_KEY, key) and ("/" not in key or key.index("/") <= 253)


def _label_key_cel(key: str) -> str:
    prefix_fits = f"(!{key}.contains('/') || {key}.indexOf('/') <= 253)"
    return f"{key}.matches({cel_string(LABEL_KEY)}) && {prefix_fits}"


_LABEL_KEY_WORDS = (
    "an optional DNS-subdomain prefix and '/', then a name of at most 63 letters, digits, '-', "
    "'_' or '.' that starts and ends with a letter or digit (like topology.kubernetes.io/zone "
    "or rack)"
)
_LABEL_VALUE_WORDS = (
    "empty, or at most 63 letters, digits, '-', '_' or '.' that start and end with a letter or "
    "digit (like r1)"
)


def label_key(path: str) -> Rule:
    """One label key, as Kubernetes takes it."""
    return Rule(
        _label_key_cel("self"),
        f"{path} must be a label key: {_LABEL_KEY_WORDS}",
        _is_label_key,
    )


def label_keys(path: str) -> Rule:
    """The keys of a map of labels (or annotations: their keys follow the same rule)."""
    return Rule(
        f"self.all(k, {_label_key_cel('k')})",
        f"{path} keys must be label keys: {_LABEL_KEY_WORDS}",
        lambda mapping: all(_is_label_key(key) for key in _keys(mapping)),
    )


def label_value(path: str) -> Rule:
    """One label value, as Kubernetes takes it."""
    return Rule(
        f"self.matches({cel_string(LABEL_VALUE)})",
        f"{path} must be label values: {_LABEL_VALUE_WORDS}",
        lambda value: matches(LABEL_VALUE, value),
    )


def _keys(mapping: Mapping[str, Any] | None) -> list[str]:
    return list(mapping or {})
