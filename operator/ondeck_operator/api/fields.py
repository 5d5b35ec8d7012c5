"""Reusable pieces of the ModelDeployment API: the enums of spec fields, the string
patterns with what each one means in words (for error messages), Kubernetes scalar types
(quantities, object names, label values, free-form objects), the rule builders shared by
several models, and `ApiModel`, the base of every API model.

Pure definitions: no I/O, no kopf, no kubernetes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel

from ondeck_operator.api.rules import Rule, RuleChecked, add_rules_to_schema

# ---------------------------------------------------------------------------- enums


class Format(StrEnum):
    """The source model's format; `ondeck-server convert --format`."""

    ONNX = "onnx"
    PYTORCH = "pytorch"
    SKLEARN = "sklearn"
    HF_CAUSAL_LM = "hf-causal-lm"


class OptimizationLevel(StrEnum):
    """onnxruntime graph optimization level saved offline; `--level`."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class Quantize(StrEnum):
    """Weight quantization; `--quantize`. int8 is dynamic; int8-static needs calibration;
    auto builds each that applies and keeps the fastest that passes the gate."""

    NONE = "none"
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4 = "int4"
    AUTO = "auto"


#: `optimize.int4.blockSize`: the block sizes onnxruntime's CPU MatMulNBits kernels have
#: fast paths for (`--int4-block-size`).
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)


class TensorDType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    BOOL = "bool"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class PathType(StrEnum):
    PREFIX = "Prefix"
    EXACT = "Exact"
    IMPLEMENTATION_SPECIFIC = "ImplementationSpecific"


class AccessMode(StrEnum):
    """Claim access modes. ReadWriteOncePod is left out: a rolling update that never
    takes a pod down first (maxUnavailable 0) could not start the new pod."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_MANY = "ReadWriteMany"


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


#: A list whose items are keyed by `name`: the API server refuses duplicate names.
LIST_MAP_BY_NAME: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


def unique_names_rule(field: str) -> Rule:
    """No two items of list `field` share a `name`."""
    return Rule(
        field=field,
        cel=f"!has(self.{field}) || "
        f"self.{field}.all(x, self.{field}.exists_one(y, y.name == x.name))",
        message=f"{field} names must be unique",
        check=lambda m: (
            len({i.name for i in getattr(m, field) or []}) == len(getattr(m, field) or [])
        ),
    )


# ----------------------------------------------------------------- scalar types

DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_RE = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST_RE = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_RE = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
URI_RE = r"^((file|https?|s3|gs|hf|pvc)://\S+|[^:\s]+)$"
PVC_URI_RE = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/\S+$"
S3_STORE_RE = r"^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/\S*)?$"
INPUT_NAME_RE = r"^[^:;\s]+$"
SHA256_RE = r"^[a-f0-9]{64}$"
HTTP_URL_RE = r"^https?://\S+$"
SECRET_KEY_RE = r"^[-._a-zA-Z0-9]+$"
ENV_NAME_RE = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
URL_PATH_RE = r"^/\S*$"
PROM_LABEL_RE = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
#: A Go-style duration of whole hours, minutes and seconds, e.g. 30s, 2m, 1h30m.
DURATION_RE = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"
#: A served model name (`ondeck-server serve --name`): the server's own pattern.
SERVED_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
_QUANTITY = re.compile(QUANTITY_RE)
LABEL_KEY_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(LABEL_KEY_RE)

#: A label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends.
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_RE)]


#: What each pattern means, for error messages (a regex is no message).
PATTERN_HINTS: dict[str, str] = {
    DNS_LABEL_RE: "a DNS-1123 label: lower-case letters, digits and '-', starting and "
    "ending with a letter or digit",
    DNS_1035_RE: "a DNS-1035 label: lower-case letters, digits and '-', starting with a "
    "letter and ending with a letter or digit",
    DNS_SUBDOMAIN_RE: "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    HOST_RE: "a lower-case DNS host name, optionally starting with '*.'",
    QUANTITY_RE: "a Kubernetes quantity (e.g. 500m, 2, 1Gi)",
    URI_RE: "a file://, http(s)://, s3://, gs://, hf:// or pvc:// URI, or a plain path",
    PVC_URI_RE: "pvc://<claim>/<path>",
    S3_STORE_RE: "s3://<bucket>/<prefix> (a bucket name: 3-63 lower-case letters, digits, "
    "'.' or '-')",
    INPUT_NAME_RE: "a tensor name without ':', ';' or white space",
    SHA256_RE: "64 lower-case hexadecimal digits",
    HTTP_URL_RE: "an http:// or https:// URL",
    SECRET_KEY_RE: "a Secret key: letters, digits, '-', '_' and '.'",
    ENV_NAME_RE: "an environment variable name: letters, digits, '-', '_' and '.', not "
    "starting with a digit",
    URL_PATH_RE: "a path starting with '/'",
    PROM_LABEL_RE: "a Prometheus label name: letters, digits and '_', not starting with a digit",
    DURATION_RE: "a duration of hours, minutes and seconds such as 30s, 2m or 1h30m",
    REASON_RE: "a CamelCase reason",
    SERVED_NAME_RE: "a model name: letters, digits, '.', '_' and '-', starting with a letter"
    " or digit",
    LABEL_KEY_RE: "a label key: an optional DNS-subdomain prefix and '/', then at most 63 "
    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    LABEL_VALUE_RE: "a label value: at most 63 letters, digits, '-', '_' or '.', starting "
    "and ending with a letter or digit",
}


def pattern_hint(pattern: str) -> str:
    return PATTERN_HINTS.get(pattern, f"a string matching {pattern}")


def keys_rule(field: str, attr: str) -> Rule:
    """The keys of map `field` must be qualified names (label and annotation keys)."""
    return Rule(
        field=field,
        cel=f"!has(self.{field}) || self.{field}.all(k, k.matches(r'{LABEL_KEY_RE}'))",
        message=f"{field} keys must be an optional DNS-subdomain prefix and '/', then at most "
        "63 letters, digits, '-', '_' or '.' that start and end with a letter or digit",
        check=lambda m: all(_LABEL_KEY.match(k) for k in getattr(m, attr) or {}),
    )


#: A Kubernetes object name (DNS-1123 subdomain).
ObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_RE)
]


def _to_quantity(value: object) -> object:
    if isinstance(value, bool):
        return value  # refused below: a bool is no quantity
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    return value


_QUANTITY_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY_VALUE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]{0,2})$")


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string, or None when it is not one."""
    match = _QUANTITY_VALUE.match(text.strip())
    if not match or match.group(2) not in _QUANTITY_SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


#: A Kubernetes resource quantity (`500m`, `2`, `1Gi`); integers are accepted.
Quantity = Annotated[
    str,
    BeforeValidator(_to_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_RE,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

#: A free-form Kubernetes object passed through unchanged (e.g. an Affinity).
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class ApiModel(RuleChecked):
    """Base of every API model: camelCase aliases, unknown fields refused, rules checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        json_schema_extra=add_rules_to_schema,
    )
