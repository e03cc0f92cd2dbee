"""Validation of task arguments and events against handler annotations.

A task's parameters become one pydantic model, compiled once when the
decorator runs. Producers validate keyword arguments with it before
anything is written; workers validate the stored JSON with the same model in
one pass (``model_validate_json``), so a message is parsed and checked once.
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from taskq.context import Context
from taskq.errors import ConfigurationError, ValidationError

# NaN and infinity are not JSON: float arguments refuse them, and one that
# slips through an ``Any`` is written as a constant that dump() then finds
# (rather than as the null pydantic writes by default, which would change
# the argument silently).
_ARG_MODEL_CONFIG = pydantic.ConfigDict(
    extra="forbid",
    arbitrary_types_allowed=True,
    allow_inf_nan=False,
    ser_json_inf_nan="constants",
)
#: What a payload holds only if it holds a non-finite number (or a string
#: that contains one of these words, which a parse then tells apart).
_NON_FINITE_MARKS = (b"NaN", b"Infinity")


def _is_context(annotation: Any) -> bool:
    """``Context``, or ``Context | None`` (so the parameter may default)."""
    if annotation is Context:
        return True
    args = typing.get_args(annotation)
    return (
        bool(args) and Context in args and all(a in (Context, type(None)) for a in args)
    )


def _not_finite(subject: str, name: str) -> ValidationError:
    return ValidationError(
        name,
        [
            {
                "loc": (),
                "msg": "NaN and infinity cannot be sent: they are not JSON",
                "type": "finite_number",
            }
        ],
        subject=subject,
    )


def _reject_constant(constant: str) -> Any:
    raise ValueError(constant)


def _error_list(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": e["loc"], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False)
    ]


class TaskSignature:
    """The parameters of a task function and their validator."""

    def __init__(self, func: Callable[..., Any], task_name: str) -> None:
        self.task_name = task_name
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # an annotation that does not resolve
            raise ConfigurationError(
                f"task {task_name!r}: cannot resolve its annotations ({exc}); "
                "import the annotated types at module level"
            ) from exc
        fields: dict[str, Any] = {}
        self.names: list[str] = []
        self.context_param: str | None = None
        for param in inspect.signature(func).parameters.values():
            annotation = hints.get(param.name, Any)
            if _is_context(annotation):
                self.context_param = param.name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(
                    f"task {task_name!r}: *args and **kwargs cannot be "
                    "validated; name every parameter"
                )
            if param.kind is param.POSITIONAL_ONLY:
                raise ConfigurationError(
                    f"task {task_name!r}: positional-only parameters are not "
                    "supported; remove the '/' from the signature"
                )
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
            self.names.append(param.name)
        try:
            self.model: type[pydantic.BaseModel] = pydantic.create_model(
                f"{task_name.replace('.', '_')}_args",
                __config__=_ARG_MODEL_CONFIG,
                **fields,
            )
        except Exception as exc:
            raise ConfigurationError(
                f"task {task_name!r}: its annotations cannot be validated "
                f"with pydantic ({exc})"
            ) from exc
        # The model's compiled validator and serializer, called directly:
        # BaseModel's own methods add a few microseconds of Python per call
        # (and dict(model) goes through __iter__ and __getattr__), which is
        # most of the cost of a small message.
        self._validate_python = self.model.__pydantic_validator__.validate_python
        self._validate_json = self.model.__pydantic_validator__.validate_json
        self._to_json = self.model.__pydantic_serializer__.to_json

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map positional and keyword arguments to parameter names."""
        if not args:
            return dict(kwargs)
        if len(args) > len(self.names):
            raise ValidationError(
                self.task_name,
                [
                    {
                        "loc": (),
                        "msg": f"takes {len(self.names)} arguments, "
                        f"{len(args)} were given",
                        "type": "too_many_arguments",
                    }
                ],
            )
        bound = dict(zip(self.names, args, strict=False))
        for name, value in kwargs.items():
            if name in bound:
                raise ValidationError(
                    self.task_name,
                    [
                        {
                            "loc": (name,),
                            "msg": "given both by position and by keyword",
                            "type": "multiple_values",
                        }
                    ],
                )
            bound[name] = value
        return bound

    def validate(self, arguments: Mapping[str, Any]) -> pydantic.BaseModel:
        try:
            model: pydantic.BaseModel = self._validate_python(arguments)
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task_name, _error_list(exc)) from None
        return model

    def dump(self, model: pydantic.BaseModel) -> bytes:
        """The JSON payload of validated arguments."""
        payload: bytes = self._to_json(model)
        if _NON_FINITE_MARKS[0] in payload or _NON_FINITE_MARKS[1] in payload:
            try:
                json.loads(payload, parse_constant=_reject_constant)
            except ValueError:
                raise _not_finite(
                    f"arguments for task {self.task_name!r}", self.task_name
                ) from None
        return payload

    @staticmethod
    def arguments(model: pydantic.BaseModel) -> dict[str, Any]:
        """Validated arguments as keyword arguments (a new dict)."""
        # The model is dropped here, so its field dict can be handed over.
        fields: dict[str, Any] = model.__dict__
        return fields

    def encode(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
        """Validate arguments and return the JSON payload."""
        return self.dump(self.validate(self.bind(args, kwargs)))

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Parse and validate a stored payload into keyword arguments."""
        try:
            model = self._validate_json(payload)
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task_name, _error_list(exc)) from None
        # The model is dropped here, so its field dict can be handed over.
        fields: dict[str, Any] = model.__dict__
        return fields


class EventSignature:
    """The annotation of a consumer's event parameter and its validator."""

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self.name = name
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:
            raise ConfigurationError(
                f"consumer {name!r}: cannot resolve its annotations ({exc})"
            ) from exc
        params = [
            p
            for p in inspect.signature(func).parameters.values()
            if not _is_context(hints.get(p.name))
        ]
        self.context_param = next(
            (n for n, h in hints.items() if _is_context(h) and n != "return"), None
        )
        if len(params) != 1:
            raise ConfigurationError(
                f"consumer {name!r} must take exactly one event parameter "
                "(plus, optionally, one annotated Context)"
            )
        annotation = hints.get(params[0].name, Any)
        try:
            self.adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
                annotation, config=_EVENT_CONFIG
            )
        except pydantic.PydanticUserError:
            # A model (or dataclass, TypedDict) brings its own config.
            self.adapter = pydantic.TypeAdapter(annotation)

    def decode(self, payload: bytes) -> Any:
        try:
            return self.adapter.validate_json(payload)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                self.name, _error_list(exc), subject=f"event for {self.name!r}"
            ) from None


_EVENT_CONFIG = pydantic.ConfigDict(allow_inf_nan=False)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_non_finite(v) for v in value)
    return False


def encode_event(topic: str, event: Any) -> bytes:
    """JSON-encode a raw event for ``publish``; raise if it cannot be.

    NaN and infinity are refused: they are not JSON (and a model would write
    them as null, changing the event).
    """
    if isinstance(event, pydantic.BaseModel):
        if _has_non_finite(event.model_dump()):
            raise _not_finite(f"event for topic {topic!r}", topic)
        return event.model_dump_json().encode()
    try:
        return json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            topic,
            [{"loc": (), "msg": str(exc), "type": "not_json"}],
            subject=f"event for topic {topic!r}",
        ) from None
