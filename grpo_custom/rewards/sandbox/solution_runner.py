"""The solution process's program: run the model's code, then answer the judge's calls to it.

Runs as ``codec.py`` + this file, compiled by the trainer and read from stdin by ``launch.BOOTSTRAP``
(``python -I -S -B -c``), followed there by a JSON payload (the code, limits, two descriptors). Before the
model's code runs it sets the run's resource limits (the kernel does not let them be raised again)
and, at ``isolation="process"`` only, installs the audit-hook guard sent in the payload. Then it
executes the code as module ``solution``, sends ``{"ready": true}`` and answers requests until the
judge closes the channel. Nothing this process says is trusted: once the model's code has run it
controls the process, so it can only choose the values the judge receives, never the verdict.
Requests: ``{"op", "target", ...}`` with ``op`` one of get, call, getattr, iter, next, len, getitem,
contains, bool, str, repr; ``target`` a reference (``["n", name]`` or ``["h", handle]``).
Replies: ``{"v": value}`` (plus ``"m"``: the new contents of list/dict/set arguments after a call)
or ``{"e": [exception type name, message]}``.
"""
import builtins as _builtins
import resource as _resource
import sys as _sys


def _solution_flush():
    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _solution_answer(request, namespace, handles):
    def make_reference(obj):
        handles.append(obj)
        return {"r": ["h", len(handles) - 1]}

    def resolve(payload):
        kind, key = payload
        if kind == "n":
            if key not in namespace:
                raise NameError("name %r is not defined" % (key,))
            return namespace[key]
        return handles[key]

    op = request["op"]
    target = resolve(request["target"])
    mutated = {}
    if op == "call":
        args = [decode_value(arg, resolve) for arg in request["args"]]
        kwargs = {key: decode_value(value, resolve) for key, value in request["kwargs"]}
        result = target(*args, **kwargs)
        for index, arg in enumerate(args):
            if type(arg) in (list, dict, set):
                mutated[str(index)] = encode_value(arg, make_reference)
    elif op == "get":
        result = target
    elif op == "getattr":
        result = getattr(target, request["name"])
    elif op == "iter":
        result = iter(target)
    elif op == "next":
        result = next(target)
    elif op == "len":
        result = len(target)
    elif op == "getitem":
        result = target[decode_value(request["key"], resolve)]
    elif op == "contains":
        result = decode_value(request["key"], resolve) in target
    elif op == "bool":
        result = bool(target)
    elif op == "str":
        result = str(target)
    elif op == "repr":
        result = repr(target)
    else:
        raise ValueError("unknown request %r" % (op,))
    reply = {"v": encode_value(result, make_reference)}
    if mutated:
        reply["m"] = mutated
    return reply


def _solution_main():
    payload = read_payload()
    for name, (soft, hard) in payload["rlimits"].items():
        _resource.setrlimit(getattr(_resource, name), (soft, hard))
    request_fd, response_fd, limit = payload["request_fd"], payload["response_fd"], payload["message_bytes"]
    if payload.get("guard"):
        exec(payload["guard"], {"__name__": "guard", "__builtins__": _builtins, "GUARD": payload["guard_config"]})
    namespace = {"__name__": "solution", "__builtins__": _builtins}
    code = payload.pop("code")
    del payload
    try:
        exec(compile(code, "<solution>", "exec"), namespace)
    except SystemExit as exc:
        _solution_flush()
        _os._exit(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))
    except BaseException:
        import traceback

        traceback.print_exc()
        _solution_flush()
        _os._exit(1)
    _solution_flush()
    send_message(response_fd, {"ready": True})
    handles = []
    while True:
        request = receive_message(request_fd, limit)
        if request is None:
            break
        try:
            reply = _solution_answer(request, namespace, handles)
            send_message(response_fd, reply)
        except SystemExit as exc:
            _solution_flush()
            _os._exit(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))
        except BaseException as exc:
            try:
                message = str(exc)[:2000]
            except BaseException:
                message = ""
            send_message(response_fd, {"e": [type(exc).__name__, message]})
        _solution_flush()
    _solution_flush()
    _os._exit(0)


_solution_main()
