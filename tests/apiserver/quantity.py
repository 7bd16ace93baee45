"""Resource quantities in the API server's canonical form (apimachinery's ``resource.Quantity``).

The API server parses every quantity it stores and writes it back in its canonical form, so what a client sent is
not what it reads: ``cpu: 2`` comes back as ``"2"``, ``memory: 1.5Gi`` as ``"1536Mi"``, ``0.5`` as ``"500m"``. A
client comparing what it sent with what it reads must compare by value. This module mirrors
``k8s.io/apimachinery/pkg/api/resource`` (``ParseQuantity``, ``Quantity.String`` through ``CanonicalizeBytes``):

- the grammar: a signed decimal number, then a binary suffix (``Ki`` .. ``Ei``), a decimal suffix (``n``, ``u``,
  ``m``, ``k``, ``M``, ``G``, ``T``, ``P``, ``E``) or a decimal exponent (``e3``, ``E-2``); a JSON number is
  read as its text;
- values finer than 1n are rounded up to 1n;
- the format is the suffix's (binary, decimal or exponent); a binary quantity below 1024 in magnitude, or not a
  whole number, is written in the decimal format (no rounding);
- decimal: the smallest integer mantissa whose exponent is a multiple of 3, with that exponent's suffix;
  binary: the mantissa divided by 1024 as long as it divides.

Pure: no I/O.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Decimal, localcontext

_GRAMMAR = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))((?:[eE][+-]?[0-9]+)|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_BINARY_SUFFIX = {power: suffix for suffix, power in _BINARY.items()} | {0: ""}
_NANO = Decimal("1e-9")


class QuantityError(ValueError):
    """Not a quantity: the API server's message (``quantities must match the regular expression ...``)."""


def parse(value: object) -> tuple[Decimal, str]:
    """The exact value of a quantity and its format (``"BinarySI"``, ``"DecimalSI"`` or ``"DecimalExponent"``)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuantityError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    found = _GRAMMAR.match(text)
    if found is None:
        raise QuantityError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number, suffix = found.group(1), found.group(2) or ""
    with localcontext() as context:
        context.prec = 80
        amount = Decimal(number)
        if suffix in _BINARY:
            return amount * (Decimal(1024) ** _BINARY[suffix]), "BinarySI"
        if len(suffix) > 1 and suffix[0] in "eE":
            return amount.scaleb(int(suffix[1:])), "DecimalExponent"
        return amount.scaleb(_DECIMAL[suffix]), "DecimalSI"


def value_of(value: object) -> Decimal:
    """A quantity's value, rounded up to 1n as the API server stores it."""
    amount, _ = parse(value)
    return _rounded(amount)


def canonical(value: object) -> str:
    """The form the API server stores and returns (``2`` -> ``"2"``, ``"1.5Gi"`` -> ``"1536Mi"``)."""
    amount, form = parse(value)
    amount = _rounded(amount)
    if amount == 0:
        return "0"
    if form == "BinarySI" and (abs(amount) < 1024 or amount != amount.to_integral_value()):
        form = "DecimalSI"
    if form == "BinarySI":
        mantissa, power = int(amount), 0
        while mantissa % 1024 == 0 and power < 6:
            mantissa //= 1024
            power += 1
        return f"{mantissa}{_BINARY_SUFFIX[power]}"
    mantissa, exponent = _mantissa_exponent(amount)
    if form == "DecimalExponent":
        return f"{mantissa}" if exponent == 0 else f"{mantissa}e{exponent}"
    suffix = _DECIMAL_SUFFIX.get(exponent)
    return f"{mantissa}{suffix}" if suffix is not None else f"{mantissa}e{exponent}"


def _rounded(amount: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = 80
        if amount.as_tuple().exponent < -9:  # type: ignore[operator]
            return amount.quantize(_NANO, rounding=ROUND_UP)
        return amount


def _mantissa_exponent(amount: Decimal) -> tuple[int, int]:
    """``amount`` as ``mantissa * 10**exponent``: no trailing zeros, then the exponent lowered to a multiple of 3."""
    sign, digits, exponent = amount.normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)))
    if exponent % 3 == 1:
        mantissa, exponent = mantissa * 10, exponent - 1
    elif exponent % 3 == 2:
        mantissa, exponent = mantissa * 100, exponent - 2
    return (-mantissa if sign else mantissa), exponent
