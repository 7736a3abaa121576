"""The judge server's program: run the dataset's tests of one program after another; return each verdict.

Runs as ``codec.py`` + this file, compiled by the trainer and read from stdin by ``launch.BOOTSTRAP``
(``python -I -S -B -c``), followed there by a JSON payload (the limits and ``control_fd``: this
process's end of a Unix socket pair whose other end only the trainer holds; ``judge_pool.py``
starts and retires these servers). Per program the trainer sends, on that socket, a length-prefixed
JSON ``{"tests", "solution"}`` (the solution's source text) with two descriptors attached
(``SCM_RIGHTS``): the write end of the request pipe and the read end of the reply pipe of a solution
process started for that program. No model code ever runs here: the tests reach the solution only
through ``_Remote`` stand-ins whose operations are requests to the solution process, and what comes
back is plain data (``codec.py``) or another stand-in. The verdict goes back on the socket:
``{"passed": true}`` once the whole test code ran without an exception, else ``{"passed": false,
"reason": ...}`` with ``"solution_ended": true`` when the solution process ended or broke the
protocol; plus ``"cpu"`` (this process's CPU seconds so far) and ``"retire"`` (true: the trainer
must not reuse this server, which then exits).

Hygiene between programs: the tests run in a fresh namespace; this module's state (``_JUDGE``,
``_FOREIGN_ERRORS``), ``sys.stdout``/``sys.stderr`` and the ``builtins`` module are reset; both
descriptors are closed. The server asks to be retired when a test raised a ``BaseException`` that
is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``...), or left a thread or a child
process behind; stdlib modules the tests changed stay changed until the trainer retires the server
(after ``judge_pool.PROGRAMS_PER_SERVER`` programs at most). Printed output goes to this process's
stdout/stderr pipe, which the trainer reads and attributes to the program under way (it is flushed
before each verdict is sent).

Names the tests use without binding them resolve to, in order: builtins; a standard-library
module of that name (imported here); the same import when the solution binds the name only by
``import``; else a stand-in for the solution's global of that name.
"""
import _ast
import builtins as _builtins
import resource as _resource
import sys as _sys


def _walk(node):
    """Every node under ``node`` (``ast.walk`` without importing ``ast``, whose imports cost start-up time)."""
    pending = [node]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(_children(node))


def _children(node):
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, _ast.AST):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, _ast.AST))


def _parse(source, filename):
    return compile(source, filename, "exec", _ast.PyCF_ONLY_AST)


class _SolutionGone(BaseException):
    """The solution process ended or broke the protocol (not an ``Exception``: tests cannot catch it by accident)."""


_JUDGE = {"broken": None, "retire": False}
_FOREIGN_ERRORS = {}
_PROGRAM_BYTES = 1 << 30


def _judge_fail(message):
    if _JUDGE["broken"] is None:
        _JUDGE["broken"] = message
    raise _SolutionGone(_JUDGE["broken"])


def _judge_exception(info, op):
    """The exception to raise in the tests for the solution's ``[type name, message]``: the builtin of that
    name if it is an ``Exception``, else a new ``Exception`` subclass of that name. ``StopIteration`` is
    real only as the answer to ``next``: elsewhere it would end the tests' loops (``all(map(...))``)."""
    if not (type(info) is list and len(info) == 2 and all(type(x) is str for x in info)):
        _judge_fail("the solution sent a malformed error")
    name, message = info
    cls = getattr(_builtins, name, None)
    if op != "next" and cls in (StopIteration, StopAsyncIteration):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        key = name if name.isidentifier() else "SolutionError"
        cls = _FOREIGN_ERRORS.setdefault(key, type(key, (Exception,), {}))
    try:
        return cls(message)
    except Exception:
        key = name if name.isidentifier() else "SolutionError"
        return _FOREIGN_ERRORS.setdefault(key, type(key, (Exception,), {}))(message)


def _judge_encode(value):
    def reference(obj):
        if type(obj) is _Remote:
            return {"r": object.__getattribute__(obj, "_grpo_ref")}
        raise TypeError("cannot pass a %s to the solution (only plain data and its own objects)" % type(obj).__name__)

    return encode_value(value, reference)


def _judge_request(op, target, args=(), fields=None):
    if _JUDGE["broken"] is not None:
        raise _SolutionGone(_JUDGE["broken"])
    message = {"op": op, "target": object.__getattribute__(target, "_grpo_ref")}
    if op == "call":
        message["args"] = [_judge_encode(arg) for arg in args[0]]
        message["kwargs"] = [[key, _judge_encode(value)] for key, value in args[1].items()]
    message.update(fields or {})
    try:
        send_message(_JUDGE["request_fd"], message)
        reply = receive_message(_JUDGE["response_fd"], _JUDGE["limit"])
    except (OSError, ValueError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        _judge_fail("the solution broke the protocol (%s)" % type(exc).__name__)
    if reply is None:
        _judge_fail("the solution process ended")
    if type(reply) is not dict:
        _judge_fail("the solution sent a malformed reply")
    if "e" in reply:
        raise _judge_exception(reply["e"], op)
    try:
        value = decode_value(reply["v"], _Remote)
        mutated = reply.get("m", {})
        if op == "call" and type(mutated) is dict:
            for index, new in mutated.items():
                original = args[0][int(index)]
                new = decode_value(new, _Remote)
                if type(original) is list and type(new) is list:
                    original[:] = new
                elif type(original) in (dict, set) and type(new) is type(original):
                    original.clear()
                    original.update(new)
    except (KeyError, ValueError, TypeError, IndexError, RecursionError, MemoryError):
        _judge_fail("the solution sent a malformed value")
    return value


class _Remote:
    """A stand-in for an object that lives in the solution process; every operation is a request."""

    __slots__ = ("_grpo_ref",)

    def __init__(self, ref):
        if not (type(ref) is list and len(ref) == 2 and ref[0] in ("n", "h")):
            _judge_fail("the solution sent a malformed reference")
        object.__setattr__(self, "_grpo_ref", ref)

    def __call__(self, *args, **kwargs):
        return _judge_request("call", self, (args, kwargs))

    def __getattr__(self, name):
        return _judge_request("getattr", self, fields={"name": name})

    def __iter__(self):
        return _judge_request("iter", self)

    def __next__(self):
        return _judge_request("next", self)

    def __len__(self):
        value = _judge_request("len", self)
        if type(value) is not int:
            raise TypeError("len() of a solution object must be an int")
        return value

    def __getitem__(self, key):
        return _judge_request("getitem", self, fields={"key": _judge_encode(key)})

    def __contains__(self, key):
        return _judge_request("contains", self, fields={"key": _judge_encode(key)}) is True

    def __bool__(self):
        return _judge_request("bool", self) is True

    def __str__(self):
        value = _judge_request("str", self)
        return value if type(value) is str else "<solution object>"

    def __repr__(self):
        value = _judge_request("repr", self)
        return value if type(value) is str else "<solution object>"


def _judge_solution_bindings(source):
    """(names the solution binds only by import -> (module, attribute or None), star-imported modules)."""
    try:
        tree = _parse(source, "<solution>")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}, []
    imported, defined, stars = {}, set(), []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, _ast.Import):
            for alias in node.names:
                if alias.asname:
                    imported[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    imported[top] = (alias.name, top)
            continue
        if isinstance(node, _ast.ImportFrom):
            if node.level == 0 and node.module:
                for alias in node.names:
                    if alias.name == "*":
                        stars.append(node.module)
                    else:
                        imported[alias.asname or alias.name] = (node.module, "." + alias.name)
            continue
        if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef)):
            defined.add(node.name)
            for inner in _walk(node):
                if isinstance(inner, (_ast.Global, _ast.Nonlocal)):
                    defined.update(inner.names)
            continue
        if isinstance(node, _ast.Name) and not isinstance(node.ctx, _ast.Load):
            defined.add(node.id)
        elif isinstance(node, (_ast.Global, _ast.Nonlocal)):
            defined.update(node.names)
        if isinstance(node, _ast.Lambda):
            continue
        pending.extend(_children(node))
    return {k: v for k, v in imported.items() if k not in defined}, stars


def _judge_import(module, attribute):
    try:
        __import__(module)
        loaded = _sys.modules[module]
        if attribute is None:
            return loaded
        if attribute.startswith("."):
            name = attribute[1:]
            if hasattr(loaded, name):
                return getattr(loaded, name)
            __import__(module + "." + name)
            return _sys.modules[module + "." + name]
        return _sys.modules[attribute]
    except Exception:
        return None


def _judge_bound_names(tree):
    """Every name the tests bind anywhere (assignments, definitions, parameters, imports, handlers)."""
    bound = set()
    for node in _walk(tree):
        if isinstance(node, _ast.Name) and not isinstance(node.ctx, _ast.Load):
            bound.add(node.id)
        elif isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, _ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (_ast.Import, _ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, _ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _judge_globals(tree, solution_source):
    imported, stars = _judge_solution_bindings(solution_source)
    stdlib = getattr(_sys, "stdlib_module_names", frozenset())
    namespace = {"__name__": "__main__", "__builtins__": _builtins}
    bound = _judge_bound_names(tree)
    names = sorted({node.id for node in _walk(tree) if isinstance(node, _ast.Name)})
    for name in names:
        if hasattr(_builtins, name) or name in namespace or name in bound:
            continue
        value = _judge_import(name, None) if name in stdlib else None
        if value is None and name in imported:
            value = _judge_import(*imported[name])
        for module in stars if value is None else ():
            loaded = _judge_import(module, None)
            if loaded is not None and hasattr(loaded, name) and not name.startswith("_"):
                value = getattr(loaded, name)
                break
        if value is None:  # the solution's global: its value if plain data (copied now), else a stand-in
            try:
                value = _judge_request("get", _Remote(["n", name]))
            except NameError:
                value = _Remote(["n", name])
        namespace[name] = value
    return namespace


def _judge_describe(exc):
    try:
        text = str(exc)
    except BaseException:
        text = ""
    name = type(exc).__name__
    return (name + ": " + text if text else name)[:300]


def _judge_run(payload):
    try:
        tree = _parse(payload["tests"], "<tests>")
        code = compile(tree, "<tests>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return {"passed": False, "reason": "bad tests: " + _judge_describe(exc)}
    try:
        ready = receive_message(_JUDGE["response_fd"], _JUDGE["limit"])
    except (OSError, ValueError, RecursionError, MemoryError, UnicodeDecodeError):
        ready = None
    if ready != {"ready": True}:
        return {"passed": False, "solution_ended": True, "reason": "failed: the solution did not finish loading"}
    try:
        namespace = _judge_globals(tree, payload["solution"])
        exec(code, namespace)
    except _SolutionGone:
        pass
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _JUDGE["retire"] = True  # SystemExit, KeyboardInterrupt...: this interpreter may be in any state
        if _JUDGE["broken"] is None:
            return {"passed": False, "reason": "failed: " + _judge_describe(exc)}
    if _JUDGE["broken"] is not None:
        return {"passed": False, "solution_ended": True, "reason": "failed: " + _JUDGE["broken"]}
    return {"passed": True, "reason": "passed"}


def _judge_flush():
    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _judge_receive(control, socket_module):
    """The next program and its two descriptors from the trainer, or None (end of file, malformed)."""
    header, fds, _flags, _address = socket_module.recv_fds(control, 4, 2)
    if len(fds) != 2 or not header:
        for fd in fds:
            _os.close(fd)
        return None
    while len(header) < 4:
        more = control.recv(4 - len(header))
        if not more:
            return None
        header += more
    size, chunks = int.from_bytes(header, "big"), []
    if size > _PROGRAM_BYTES:
        return None
    while size:
        chunk = control.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return loads(b"".join(chunks).decode("utf-8")), fds


def _judge_has_children():
    try:
        return _os.waitpid(-1, _os.WNOHANG) is not None
    except ChildProcessError:
        return False


def _judge_main():
    import _thread
    import socket as socket_module

    payload = read_payload()
    for name, (soft, hard) in payload["rlimits"].items():
        _resource.setrlimit(getattr(_resource, name), (soft, hard))
    control_fd, limit = payload["control_fd"], payload["message_bytes"]
    control = socket_module.socket(fileno=control_fd)
    builtins_state = dict(vars(_builtins))
    streams = (_sys.stdout, _sys.stderr)
    while True:
        try:
            received = _judge_receive(control, socket_module)
        except (OSError, ValueError, UnicodeDecodeError):
            received = None
        if received is None:
            break
        program, (request_fd, response_fd) = received
        _JUDGE.clear()
        _JUDGE.update(broken=None, retire=False, request_fd=request_fd, response_fd=response_fd, limit=limit)
        _FOREIGN_ERRORS.clear()
        try:
            verdict = _judge_run(program)
        finally:
            _os.close(request_fd)  # the solution process sees the end of its requests
            _os.close(response_fd)
        del program
        _judge_flush()
        _sys.stdout, _sys.stderr = streams
        current = vars(_builtins)
        if current.keys() != builtins_state.keys() or any(current[k] is not v for k, v in builtins_state.items()):
            current.clear()
            current.update(builtins_state)
        retire = _JUDGE["retire"] or _thread._count() > 0 or _judge_has_children()
        usage = _resource.getrusage(_resource.RUSAGE_SELF)
        verdict.update(cpu=usage.ru_utime + usage.ru_stime, retire=retire)
        send_message(control_fd, verdict)
        if retire:
            break
    _os._exit(0)


_judge_main()
