# Candidate side of `assert` tests (runs as the candidate uid): loads the program, then
# answers calls from the trusted runner (fd 3 in, fd 4 out) with plain data. Nothing here
# is trusted; see assert_runner.py.
import _pickle
import _struct
import builtins
import os
import sys

_R = os.fdopen(3, "rb")
_W = os.fdopen(4, "wb")
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _send(obj):
    try:
        data = _pickle.dumps(obj, protocol=4)
    except Exception as e:
        data = _pickle.dumps(("raise", "TypeError", "value cannot be sent to the tests: %s" % e), protocol=4)
    _W.write(_struct.pack(">I", len(data)) + data)
    _W.flush()


def _plain(v, depth=0):
    if depth > 20:
        return False
    if type(v) in _PLAIN:
        return True
    if type(v) in (list, tuple, set, frozenset):
        return all(_plain(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(_plain(k, depth + 1) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _tb(limit=-3):
    import traceback

    return "".join(traceback.format_exc(limit=limit))[-3000:]


def main():
    with open(sys.argv[1], "rb") as f:
        src = f.read()
    try:
        code = compile(src, "solution.py", "exec")
    except (SyntaxError, ValueError):
        _send(("load_error", "compile_error", _tb(0)))
        return
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, ns)
    except MemoryError:
        _send(("load_error", "memory", _tb()))
        return
    except BaseException:
        _send(("load_error", "runtime_error", _tb()))
        return
    funcs = []
    values = {}
    for k, v in list(ns.items()):
        if k.startswith("__"):
            continue
        if callable(v) and not isinstance(v, type):
            funcs.append(k)
        elif _plain(v):
            values[k] = v
    _send(("ready", funcs, values))
    while True:
        head = _R.read(4)
        if len(head) < 4:
            return
        (n,) = _struct.unpack(">I", head)
        req = _pickle.loads(_R.read(n))
        _, name, args, kwargs = req
        try:
            fn = ns[name]
            _send(("ok", fn(*args, **kwargs)))
        except MemoryError as e:
            _send(("raise", "MemoryError", str(e)))
        except BaseException as e:
            _send(("raise", type(e).__name__, str(e)[:2000]))


main()
