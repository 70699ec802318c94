"""InferParameter maps <-> Python values, with typed getters whose errors name the parameter.

The protocol carries parameters as a oneof of bool, int64, string, double and uint64.
Getters accept the obvious equivalents (an int64 for a float, an integral double for an
int, "true"/"false" for a bool), because clients differ in which field they fill.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from textserve.core.errors import InvalidInput
from textserve.oip import grpc_predict_v2_pb2 as pb

ParamValue = bool | int | float | str
"""A decoded parameter value."""

Default = TypeVar("Default")


def decode(parameters: Mapping[str, pb.InferParameter]) -> dict[str, ParamValue]:
    """The set values of a protobuf parameter map (unset oneofs are left out)."""
    values: dict[str, ParamValue] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(parameter, kind)
    return values


def encode(target: Any, values: Mapping[str, ParamValue]) -> None:
    """Writes values into a protobuf parameter map (bool before int: bool is an int)."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


class Parameters:
    """Decoded parameters of a request (or of one requested output)."""

    def __init__(self, values: Mapping[str, ParamValue], where: str = "parameters") -> None:
        self.values = dict(values)
        self.where = where

    @classmethod
    def of(cls, parameters: Mapping[str, pb.InferParameter], where: str = "parameters") -> Parameters:
        """From a protobuf parameter map."""
        return cls(decode(parameters), where)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def field(self, key: str) -> str:
        """How errors name the parameter: parameters[key]."""
        return f"{self.where}[{key}]"

    def unknown(self, known: Iterable[str]) -> list[str]:
        """Keys that are not in `known`, sorted."""
        allowed = set(known)
        return sorted(key for key in self.values if key not in allowed)

    def get_bool(self, key: str, default: Default) -> bool | Default:
        """A bool_param (or "true"/"false", or int64 0/1); default when absent."""
        if key not in self.values:
            return default
        value = self.values[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidInput(self.field(key), f"must be a bool (bool_param), got {value!r}")

    def get_int(
        self, key: str, default: Default, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | Default:
        """An int64_param/uint64_param (or an integral double_param) within [minimum, maximum]."""
        if key not in self.values:
            return default
        value = self.values[key]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(self.field(key), f"must be an integer (int64_param), got {value!r}")
        self._check_range(key, value, minimum, maximum)
        return value

    def get_float(
        self, key: str, default: Default, *, minimum: float | None = None, maximum: float | None = None
    ) -> float | Default:
        """A double_param (or an int64_param) within [minimum, maximum]."""
        if key not in self.values:
            return default
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(self.field(key), f"must be a number (double_param), got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise InvalidInput(self.field(key), f"must be a finite number, got {number}")
        self._check_range(key, number, minimum, maximum)
        return number

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            low = "-inf" if minimum is None else minimum
            high = "inf" if maximum is None else maximum
            raise InvalidInput(self.field(key), f"is {value}; allowed range is [{low}, {high}]")

    def get_str(self, key: str, default: Default) -> str | Default:
        """A string_param."""
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, str):
            raise InvalidInput(self.field(key), f"must be a string (string_param), got {value!r}")
        return value
