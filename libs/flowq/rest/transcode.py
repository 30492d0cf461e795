"""Build a gRPC request message from an HTTP request, and render a response as JSON.

The order is the one of google.api.http: the body first (`"*"`: the whole request; `"field"`:
that field), then the path variables, then the query parameters. A field is given once: a
path variable or query parameter that disagrees with a non-empty value from an earlier
source is refused (400 naming the field) rather than silently preferring one of them.

Query parameters may name any field by its proto or JSON name, nested by dotted path
(`workflow.mode=DAG`), repeated by repeating the parameter; on a `body: "*"` route they fill
fields the body left empty (so `POST /api/v1/workflow/exec?appId=a` works).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from flowq.rest.errors import GatewayError, invalid_field
from flowq.rest.routes import FieldPath, Route, resolve_field_path, url_settable

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)

_PARSE_PREFIX = re.compile(r"Failed to parse (\S+) field: ")
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')
_AVAILABLE = re.compile(r"Available Fields\(except extensions\): \"\[(.*)\]\"")
_LOCATION = re.compile(r"\s+at\s+\"?[\w.]+\"?[.\s]*$")


def build_request(
    route: Route, path_params: Mapping[FieldPath, str], query: bytes, body: bytes
) -> Message:
    """The request message for `route`; raises GatewayError (400) for anything it cannot use."""
    message = route.request_class()
    if route.body:
        _merge_body(route, message, body)
    bound: dict[FieldPath, str] = {}
    for path, value in path_params.items():
        fields = resolve_field_path(message.DESCRIPTOR, path)
        assert fields is not None  # checked when the route was built
        name = ".".join(f.json_name for f in fields)
        _assign(message, fields, [_convert(fields[-1], value, name)], name, "the URL path")
        bound[tuple(f.name for f in fields)] = "the URL path"
    for name, values in _query_params(query).items():
        fields = resolve_field_path(message.DESCRIPTOR, name.split("."))
        if fields is None:
            raise invalid_field(name, f"unknown query parameter {name!r}")
        _check_url_settable(fields, name)
        converted = [_convert(fields[-1], v, name) for v in values]
        earlier = bound.get(tuple(f.name for f in fields), "the request body")
        _assign(message, fields, converted, name, "the query string", earlier)
    return message


def render_response(route: Route, message: Message) -> Any:
    """The JSON value of a response: camelCase names, enum names, default values included."""
    rendered = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    if route.response_body:
        field = message.DESCRIPTOR.fields_by_name[route.response_body]
        return rendered.get(field.json_name)
    return rendered


# -- body ---------------------------------------------------------------------------------


def _merge_body(route: Route, message: Message, body: bytes) -> None:
    if not body.strip():
        return  # an empty body is {}
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise GatewayError(400, "request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as err:
        raise GatewayError(
            400,
            f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
        ) from None
    except RecursionError:
        raise GatewayError(400, "request body is nested too deeply") from None
    if route.body == "*":
        if not isinstance(data, dict):
            raise GatewayError(400, f"request body must be a JSON object, not {_json_kind(data)}")
    else:
        data = {message.DESCRIPTOR.fields_by_name[route.body].json_name: data}
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise _body_error(str(err)) from None
    except RecursionError:
        raise GatewayError(400, "request body is nested too deeply") from None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return (
        "a number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else "a boolean"
    )


def _body_error(text: str) -> GatewayError:
    """Turn json_format's nested "Failed to parse x field: ..." into a field path and reason."""
    path: list[str] = []
    while match := _PARSE_PREFIX.match(text):
        path.append(match[1])
        text = text[match.end() :]
    if unknown := _NO_FIELD.search(text):
        path.append(unknown[1])
        reason = "unknown field"
        if available := _AVAILABLE.search(text):
            reason += f"; expected one of {available[1]}"
    else:
        reason = _LOCATION.sub("", text).rstrip(". ") or "invalid value"
    if not path:
        return GatewayError(400, f"request body: {reason}")
    field = ".".join(path)
    return invalid_field(field, f"request body, field {field!r}: {reason}")


# -- path and query -----------------------------------------------------------------------


def _query_params(query: bytes) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    try:
        # Raw non-ASCII bytes and %-escapes alike must decode as UTF-8.
        pairs = parse_qsl(
            query.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        raise GatewayError(400, "the query string is not valid UTF-8 once decoded") from None
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    return params


def _check_url_settable(fields: Sequence[FieldDescriptor], name: str) -> None:
    leaf = fields[-1]
    if url_settable(leaf):
        return
    if leaf.message_type.GetOptions().map_entry:
        raise invalid_field(name, f"{name!r} is a map; send it in the request body")
    if leaf.is_repeated:
        raise invalid_field(name, f"{name!r} is a list of messages; send it in the request body")
    raise invalid_field(
        name, f"{name!r} is a message; set its fields ({name}.field=...) or use the body"
    )


def _convert(field: FieldDescriptor, text: str, name: str) -> Any:
    """A URL string as a value for `field`; 400 naming `name` when it does not fit."""
    try:
        return _convert_or_raise(field, text)
    except ValueError as err:
        raise invalid_field(name, f"invalid value {text!r} for {name!r}: {err}") from None


def _convert_or_raise(field: FieldDescriptor, text: str) -> Any:
    kind = field.type
    if field.message_type is not None:  # a scalar-like well-known type (url_settable)
        message = message_factory.GetMessageClass(field.message_type)()
        wrapped = field.message_type.fields_by_name.get("value")
        if field.message_type.full_name.endswith("Value") and wrapped is not None:
            message.value = _convert_or_raise(wrapped, text)
            return message
        try:
            json_format.ParseDict(text, message)
        except json_format.ParseError as err:
            raise ValueError(_LOCATION.sub("", str(err)).rstrip(". ")) from None
        return message
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        if text in enum.values_by_name:
            return enum.values_by_name[text].number
        if re.fullmatch(r"-?\d+", text) and int(text) in enum.values_by_number:
            return int(text)
        raise ValueError(f"expected one of {', '.join(v.name for v in enum.values)}")
    if kind == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError("expected true or false")
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        if not re.fullmatch(r"[-+]?\d+", text):
            raise ValueError("expected an integer")
        number = int(text)
        if not low <= number <= high:
            raise ValueError(f"out of range [{low}, {high}]")
        return number
    if kind in _FLOATS:
        number = float(text)  # ValueError says "could not convert string to float"
        if kind == FieldDescriptor.TYPE_FLOAT and math.isfinite(number) and abs(number) > 3.4e38:
            raise ValueError("out of range for a float")
        return number
    if kind == FieldDescriptor.TYPE_BYTES:
        padded = text + "=" * (-len(text) % 4)
        try:
            return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        except (binascii.Error, ValueError):
            raise ValueError("expected base64") from None
    raise ValueError(f"fields of type {kind} cannot be set from the URL")


def _assign(
    message: Message,
    fields: Sequence[FieldDescriptor],
    values: list[Any],
    name: str,
    source: str,
    earlier: str = "the request body",
) -> None:
    parent = message
    for field in fields[:-1]:
        parent = getattr(parent, field.name)
    leaf = fields[-1]
    current = getattr(parent, leaf.name)
    if leaf.is_repeated:
        if len(current) and list(current) != values:
            raise invalid_field(name, f"{name!r} is given both in {source} and in {earlier}")
        if not len(current):
            for value in values:
                if isinstance(value, Message):
                    current.add().CopyFrom(value)
                else:
                    current.append(value)
        return
    if any(v != values[0] for v in values[1:]):
        raise invalid_field(name, f"{name!r} is given more than once with different values")
    value = values[0]
    present = parent.HasField(leaf.name) if leaf.has_presence else current != leaf.default_value
    if present and current != value:
        raise invalid_field(
            name,
            f"{name!r} is {_show(value)} in {source} but {_show(current)} in {earlier}",
        )
    if isinstance(value, Message):
        current.CopyFrom(value)
    else:
        setattr(parent, leaf.name, value)


def _show(value: Any) -> str:
    if isinstance(value, Message):
        return json.dumps(json_format.MessageToDict(value))
    return repr(value)
