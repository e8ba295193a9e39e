# `call` tests (runs as the candidate uid): reads {"fn_name", "inputs"} from stdin before the
# program runs, calls the function once per input, and writes one JSON line per call to the
# original stdout (the program's own prints go to /dev/null). The expected outputs never enter
# the sandbox: the verifier compares, so nothing printed here can forge a pass.
import json
import os
import sys
import traceback

_SPEC = json.loads(sys.stdin.read())
_OUT = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def _emit(obj):
    _OUT.write(json.dumps(obj) + "\n")
    _OUT.flush()


def _resolve(ns, name):
    f = ns.get(name)
    if callable(f) and not isinstance(f, type):
        return lambda: f
    for v in list(ns.values()):
        if isinstance(v, type) and callable(getattr(v, name, None)):
            return lambda: getattr(v(), name)
    return None


def main():
    with open(sys.argv[1], "rb") as f:
        src = f.read()
    try:
        code = compile(src, "solution.py", "exec")
    except (SyntaxError, ValueError):
        _emit({"load": "compile_error", "detail": "".join(traceback.format_exc(limit=0))[-3000:]})
        return
    ns = {"__name__": "solution"}
    try:
        exec(code, ns)
    except MemoryError:
        _emit({"load": "memory", "detail": traceback.format_exc(limit=-3)[-3000:]})
        return
    except BaseException:
        _emit({"load": "runtime_error", "detail": traceback.format_exc(limit=-3)[-3000:]})
        return
    make = _resolve(ns, _SPEC["fn_name"])
    if make is None:
        _emit({"load": "runtime_error", "detail": "the program does not define %s" % _SPEC["fn_name"]})
        return
    for i, inp in enumerate(_SPEC["inputs"]):
        args = inp if isinstance(inp, list) else [inp]
        try:
            res = make()(*args)
            try:
                line = {"i": i, "ok": res}
                json.dumps(line)
            except (TypeError, ValueError) as e:
                line = {"i": i, "error": "the result cannot be compared: %s" % e}
        except MemoryError:
            line = {"i": i, "error": "MemoryError", "kind": "memory"}
        except BaseException as e:
            line = {"i": i, "error": "%s: %s" % (type(e).__name__, str(e)[:500])}
        _emit(line)


main()
