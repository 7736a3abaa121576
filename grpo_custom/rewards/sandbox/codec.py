"""Plain-data values and length-prefixed JSON messages between the judge and the solution process.

This file is also the first part of both sandboxed programs (its text is prepended to
``solution_runner.py`` and ``judge_runner.py``), so it uses only the standard library and no
``from __future__`` import, and imports nothing that costs start-up time (no ``json``, whose ``re``
import alone doubles a bare interpreter's start): messages are written by :func:`dumps` and read
by CPython's C JSON scanner (``_json``), falling back to ``json`` elsewhere.

A value crosses the boundary only as plain data: ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes``, ``complex`` and ``list`` / ``tuple`` / ``dict`` / ``set`` / ``frozenset`` of those, matched by
exact type (a subclass with its own ``__eq__`` is not plain). Anything else travels as a reference
``{"r": ...}`` and stays in the process that made it. Decoding builds only those built-in types,
so a value sent by the model's code carries no behaviour into the judge.
"""
import os as _os

MAX_VALUE_DEPTH = 100


def encode_value(value, reference, depth=0):
    """``value`` as JSON-ready data; ``reference(obj)`` encodes what is not plain data (or raises)."""
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if depth >= MAX_VALUE_DEPTH:
        raise ValueError("value nested deeper than %d levels" % MAX_VALUE_DEPTH)
    depth += 1
    if kind is list:
        return [encode_value(item, reference, depth) for item in value]
    if kind is tuple:
        return {"t": [encode_value(item, reference, depth) for item in value]}
    if kind is dict:
        return {"d": [[encode_value(k, reference, depth), encode_value(v, reference, depth)] for k, v in value.items()]}
    if kind is set:
        return {"s": [encode_value(item, reference, depth) for item in value]}
    if kind is frozenset:
        return {"f": [encode_value(item, reference, depth) for item in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    return reference(value)


def decode_value(data, reference):
    """The value ``encode_value`` encoded; ``reference(payload)`` rebuilds a ``{"r": payload}``."""
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is float or kind is str:
        return data
    if kind is list:
        return [decode_value(item, reference) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueError("malformed value")
    (tag, payload), = data.items()
    if tag == "r":
        return reference(payload)
    if tag == "b" and type(payload) is str:
        return bytes.fromhex(payload)
    if tag == "c" and type(payload) is list and len(payload) == 2 and all(type(x) in (int, float) for x in payload):
        return complex(payload[0], payload[1])
    if type(payload) is not list:
        raise ValueError("malformed value")
    if tag == "t":
        return tuple(decode_value(item, reference) for item in payload)
    if tag == "s":
        return set(decode_value(item, reference) for item in payload)
    if tag == "f":
        return frozenset(decode_value(item, reference) for item in payload)
    if tag == "d":
        if not all(type(pair) is list and len(pair) == 2 for pair in payload):
            raise ValueError("malformed dict")
        return {decode_value(k, reference): decode_value(v, reference) for k, v in payload}
    raise ValueError("unknown value tag %r" % (tag,))


_JSON_ESCAPES = {i: "\\u%04x" % i for i in range(32)}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})
_JSON_ESCAPES.update({i: "\\u%04x" % i for i in range(0xD800, 0xE000)})  # lone surrogates stay encodable


def dumps(data):
    """Compact JSON text of ``data`` (None, bool, int, float, str, and lists and str-keyed dicts of them)."""
    kind = type(data)
    if kind is str:
        return '"' + data.translate(_JSON_ESCAPES) + '"'
    if data is None:
        return "null"
    if kind is bool:
        return "true" if data else "false"
    if kind is int:
        return int.__repr__(data)
    if kind is float:
        if data != data:
            return "NaN"
        if data in (float("inf"), float("-inf")):
            return "Infinity" if data > 0 else "-Infinity"
        return float.__repr__(data)
    if kind is list:
        return "[" + ",".join([dumps(item) for item in data]) + "]"
    if kind is dict:
        return "{" + ",".join([dumps(str(key)) + ":" + dumps(value) for key, value in data.items()]) + "}"
    raise TypeError("cannot write %s as JSON" % kind.__name__)


def _json_reader():
    try:
        import _json

        class _Context:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
            memo = None

        scan = _json.make_scanner(_Context())
    except (ImportError, AttributeError, TypeError):
        import json

        return json.loads

    def loads(text):
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError("malformed JSON") from None
        if end != len(text):
            raise ValueError("malformed JSON")
        return value

    return loads


loads = _json_reader()


def send_message(fd, message):
    """Write ``message`` (JSON-ready) to ``fd`` as a 4-byte big-endian length and UTF-8 JSON."""
    body = dumps(message).encode("utf-8")
    view = memoryview(len(body).to_bytes(4, "big") + body)
    while view:
        view = view[_os.write(fd, view):]


def _read_exact(fd, size):
    chunks, left = [], size
    while left:
        chunk = _os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive_message(fd, limit):
    """The next message on ``fd``, or None at end of file; ``ValueError`` if it is malformed or over ``limit`` bytes."""
    header = _read_exact(fd, 4)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > limit:
        raise ValueError("message of %d bytes is over the %d-byte limit" % (size, limit))
    body = _read_exact(fd, size)
    if body is None:
        raise ValueError("message cut short")
    return loads(body.decode("utf-8"))


def read_payload():
    """The program's JSON payload from stdin; stdin is then ``/dev/null``."""
    chunks = []
    while True:
        chunk = _os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    null = _os.open(_os.devnull, _os.O_RDONLY)
    _os.dup2(null, 0)
    _os.close(null)
    return loads(b"".join(chunks).decode("utf-8"))
