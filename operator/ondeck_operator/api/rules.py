"""Cross-field rules of the ModelDeployment API, written once and enforced twice: by
pydantic (a model validator) and by the API server (the same rule as a CEL expression in
the CRD's `x-kubernetes-validations`), so `ondeck validate` and `kubectl apply` refuse the
same manifests with the same message.

This module holds the rule type and the mixin that checks rules; the rules themselves sit
on the models in `ondeck_operator.api.spec`. It evaluates no CEL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

#: pydantic error type of a failed rule; `ctx["field"]` names the field it is about.
RULE_ERROR = "ondeck_rule"


@dataclass(frozen=True)
class Rule:
    """One cross-field rule on the object it is attached to.

    `field` is the path, relative to that object, that the error is reported on (as the
    CRD's `fieldPath`, without the leading dot); `cel` is the rule on `self` as the API
    server evaluates it; `check` is the same rule in Python on the validated model;
    `message` says what is wrong and what to do.
    """

    field: str
    cel: str
    message: str
    check: Callable[[Any], bool]

    def to_crd(self) -> dict[str, str]:
        return {
            "rule": self.cel,
            "message": self.message,
            "fieldPath": f".{self.field}",
            "reason": "FieldValueInvalid",
        }


class RuleChecked(BaseModel):
    """Mixin: after field validation, check every rule in `__rules__`, in order."""

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.__rules__:
            if not rule.check(self):
                raise PydanticCustomError(RULE_ERROR, rule.message, {"field": rule.field})
        return self

    @classmethod
    def crd_validations(cls) -> list[dict[str, str]]:
        return [rule.to_crd() for rule in cls.__rules__]


def add_rules_to_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """`json_schema_extra` hook: put a model's rules into its JSON schema as CEL."""
    rules: tuple[Rule, ...] = getattr(cls, "__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_crd() for rule in rules]
