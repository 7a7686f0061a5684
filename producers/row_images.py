"""Row images as JSON arrays built by SQLite in one call, and their exact decoding.

Why: the capture triggers run inside the application's own writes. Assembling a quoted
literal per column with ``||`` made each image cost the primary more than the change-log
insert itself; one ``json_array()`` call builds the whole row in C, and Python's C JSON
parser decodes it in one call. Format 1 of an image, for values ``v1..vn`` (the table's
columns in order, then rowid when rowid is the key)::

    [[1], v1, ..., vn]

The leading ``[1]`` names the format (a literal-list image of the earlier format never
starts with ``[``) and proves that the primary's SQLite kept JSON subtypes through the
``CASE`` that guards each value: a SQLite that did not would turn the guarded values into
strings, and decoding refuses the image instead of reading a REAL as TEXT. JSON cannot
carry every SQLite value exactly, so each value is guarded:

* INTEGER, TEXT and NULL are JSON numbers, strings and null (JSON escapes NUL and control
  characters; TEXT that is not valid UTF-8 passes through byte for byte, as before);
* a REAL is ``["<printf('%!.20g')>"]``: SQLite's JSON prints 15 digits, which do not name
  one double, and ``Inf`` is not JSON; 20 digits read back exactly (as in the earlier
  format);
* a BLOB, which JSON cannot hold, is ``{"x": "<hex>"}``.

A table with more columns than one SQL function call may take keeps the earlier format.
"""

from __future__ import annotations

import json

from producers.sqlite_changelog import (
    REAL_FORMAT,
    ROWID,
    TEXT_AS_HEX,
    quote_identifier,
)
from schemas.records import TableDefinition, Value

IMAGE_FORMAT = 1
FORMAT_TAG = [IMAGE_FORMAT]
MAX_JSON_COLUMNS = 100  # SQLite's default limit on a function's arguments is 127 (pre-3.48)

_scan = json.JSONDecoder().scan_once  # the C scanner, without json.loads' Python wrappers


class ImageFormatError(ValueError):
    """A change-log image this cutline cannot read exactly."""


def json_value_sql(expression: str) -> str:
    """SQL for one value inside ``json_array()``: itself, or a tagged REAL or BLOB."""
    return (
        f"CASE typeof({expression}) WHEN 'real' THEN json_array(printf('{REAL_FORMAT}', "
        f"{expression})) WHEN 'blob' THEN json_object('x', hex({expression})) "
        f"ELSE {expression} END"
    )


def json_image_sql(definition: TableDefinition, alias: str) -> str | None:
    """SQL for the row's JSON image, or None for a table too wide for one call."""
    columns = [f"{alias}.{quote_identifier(c)}" for c in definition.column_names]
    if len(columns) + 2 > MAX_JSON_COLUMNS:
        return None
    values = [json_value_sql(c) for c in columns]
    if definition.key_columns == (ROWID,):
        values.append(f"{alias}.rowid")  # always an INTEGER
    tag = f"CASE WHEN typeof({columns[0]}) IS NOT NULL THEN json_array({IMAGE_FORMAT}) END"
    return f"json_array({tag}, {', '.join(values)})"


def is_json_image(image: str) -> bool:
    return image[:1] == "["


def json_elements(image: str) -> list:
    """The image's elements after the format tag, as JSON decodes them (REAL and BLOB still
    tagged: see :func:`element_value`)."""
    try:
        elements, end = _scan(image, 0)
    except (ValueError, StopIteration):
        end = -1
    if end != len(image) or type(elements) is not list:
        raise ImageFormatError(f"a change-log image is not one JSON array: {image[:40]!r}")
    if not elements or elements[0] != FORMAT_TAG:
        raise ImageFormatError(
            f"a change-log image starts with {str(elements[:1])[:40]}, not the format tag "
            f"{FORMAT_TAG}: written by a newer cutline, or the primary's SQLite library "
            "drops JSON subtypes; upgrade cutline or that SQLite library"
        )
    del elements[0]
    return elements


def needs_untagging(image: str) -> bool:
    """False when no element can be a tagged REAL or BLOB (no ``[`` or ``{`` past the tag):
    then the decoded elements are the values themselves."""
    return image.find("[", 4) >= 0 or image.find("{") >= 0


def element_value(element: object) -> Value:
    """The value a decoded element stands for."""
    kind = type(element)
    if kind is list:
        return float(element[0])  # type: ignore[index]
    if kind is dict:
        return bytes.fromhex(element["x"])  # type: ignore[index]
    return element  # type: ignore[return-value]


def json_values(image: str) -> list[Value]:
    """Every value of a JSON image, exact (TEXT not valid UTF-8 still as surrogates)."""
    elements = json_elements(image)
    return untagged(elements) if needs_untagging(image) else elements


def untagged(elements: list) -> list[Value]:
    """:func:`element_value` of each element, inline (it runs for every REAL row)."""
    return [
        e
        if (kind := e.__class__) is not list and kind is not dict
        else float(e[0])
        if kind is list
        else bytes.fromhex(e["x"])
        for e in elements
    ]


def element_literal(element: object) -> str:
    """The SQL literal the earlier format wrote for this value (``value_sql``).

    Kafka keys are made of these literals, so a row keeps its key, and its partition,
    whichever format its changes were logged in.
    """
    kind = type(element)
    if kind is int:
        return str(element)
    if kind is str:
        text: str = element  # type: ignore[assignment]
        if "\x00" in text:
            return f"{TEXT_AS_HEX}'{text.encode('utf-8', 'surrogateescape').hex().upper()}'"
        return "'" + text.replace("'", "''") + "'"
    if element is None:
        return "NULL"
    if kind is list:
        return element[0]  # type: ignore[index]
    if kind is dict:
        return f"X'{element['x']}'"  # type: ignore[index]
    raise ImageFormatError(f"a change-log image holds an unexpected value {element!r:.40}")


def image_values(image: str) -> list[Value]:
    """Every value of an image in either format (the earlier one: a literal list)."""
    if is_json_image(image):
        return json_values(image)
    from producers.sqlite_changelog import parse_literal, split_literals

    return [parse_literal(x) for x in split_literals(image)]
