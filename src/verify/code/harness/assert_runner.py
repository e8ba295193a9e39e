# Trusted test runner of `distill verify` for `assert` tests (runs as the trusted uid).
#
# The candidate program runs in another process under another uid (candidate_server.py);
# this process only ever holds the test program and the run token, which the candidate
# cannot read (different uid, private directory, token on this process's stdin only).
# Every name the candidate defines is seen here as a proxy: calling it sends the arguments
# to the candidate process and gets back plain data (a restricted unpickler refuses every
# class but a few builtins), so a candidate cannot return an object that equals anything,
# patch `assert`, `check` or `builtins` here, or end this process early. The last line of
# stdout is `DISTILL-RESULT <token> <json>`, written only by this process after the tests.
#
# argv: assert_runner.py TEST_FILE ENTRY_POINT EARLY_EXIT(0|1); fd 3 -> candidate, fd 4 <- candidate.
# Only C-level modules are imported (start-up time is most of a run's cost).
import _ast
import _io
import _pickle
import _struct
import builtins
import os
import sys

_TOKEN = sys.stdin.readline().strip()
_W = os.fdopen(3, "wb")
_R = os.fdopen(4, "rb")
_SAFE = {("builtins", n) for n in ("complex", "set", "frozenset", "bytearray", "slice", "range")}


class _Safe(_pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE:
            return getattr(builtins, name)
        raise _pickle.UnpicklingError("the candidate returned an object of class %s.%s; only plain data is accepted" % (module, name))


class CandidateDied(BaseException):
    pass


def _recv():
    head = _R.read(4)
    if len(head) < 4:
        raise CandidateDied("the candidate process exited")
    (n,) = _struct.unpack(">I", head)
    data = _R.read(n)
    if len(data) < n:
        raise CandidateDied("the candidate process exited")
    return _Safe(_io.BytesIO(data)).load()


def _send(obj):
    data = _pickle.dumps(obj, protocol=4)
    try:
        _W.write(_struct.pack(">I", len(data)) + data)
        _W.flush()
    except (BrokenPipeError, OSError):
        raise CandidateDied("the candidate process exited")


def _exception(name, msg):
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:
            pass
    return RuntimeError("%s: %s" % (name, msg))


def _proxy(name):
    def call(*args, **kwargs):
        _send(("call", name, args, kwargs))
        reply = _recv()
        if not isinstance(reply, tuple) or not reply:
            raise CandidateDied("the candidate process sent a malformed reply")
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "raise" and len(reply) == 3:
            raise _exception(reply[1], reply[2])
        raise CandidateDied("the candidate process sent a malformed reply")

    call.__name__ = str(name)
    return call


def _json_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20 or 0xD800 <= o <= 0xDFFF:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _result(status, passed, total, detail=""):
    sys.stdout.flush()
    line = '{"status": %s, "passed": %d, "total": %d, "detail": %s}' % (
        _json_str(status), passed, total, _json_str(detail[-2000:]))
    os.write(1, ("\nDISTILL-RESULT %s %s\n" % (_TOKEN, line)).encode())
    os._exit(0)


def _kind(e):
    if isinstance(e, AssertionError):
        return "wrong_answer"
    if isinstance(e, MemoryError):
        return "memory"
    return "runtime_error"


def _describe(e):
    text = "%s: %s" % (type(e).__name__, e)
    return text if text.strip() != "AssertionError:" else "AssertionError"


def main():
    test_file, entry, early = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    with open(test_file, "rb") as f:
        test_src = f.read().decode("utf-8", "replace")
    tree = compile(test_src, "test.py", "exec", _ast.PyCF_ONLY_AST)
    units = []  # (is_test, code, label)
    calls_check = False
    for node in tree.body:
        is_check_call = (
            isinstance(node, _ast.Expr) and isinstance(node.value, _ast.Call)
            and isinstance(node.value.func, _ast.Name) and node.value.func.id == "check"
        )
        calls_check = calls_check or is_check_call
        code = compile(_ast.Module(body=[node], type_ignores=[]), "test.py", "exec")
        units.append((isinstance(node, _ast.Assert) or is_check_call, code, "line %d" % node.lineno))
    defines_check = any(isinstance(n, _ast.FunctionDef) and n.name == "check" for n in tree.body)
    auto_check = bool(entry) and defines_check and not calls_check
    total = sum(1 for u in units if u[0]) + (1 if auto_check else 0)

    try:
        ready = _recv()
    except CandidateDied as e:
        _result("runtime_error", 0, total, "the candidate program exited while loading (%s)" % e)
    except Exception as e:
        _result("runtime_error", 0, total, _describe(e))
    if not isinstance(ready, tuple) or len(ready) != 3:
        _result("runtime_error", 0, total, "malformed message from the candidate process")
    if ready[0] == "load_error":
        _result(str(ready[1]), 0, total, str(ready[2]))
    funcs, values = ready[1], ready[2]
    ns = {"__name__": "__test__", "__builtins__": builtins}
    if isinstance(values, dict):
        ns.update({str(k): v for k, v in values.items()})
    if isinstance(funcs, list):
        ns.update({str(k): _proxy(str(k)) for k in funcs})

    passed = 0
    first = None
    for is_test, code, label in units:
        try:
            exec(code, ns)
            if is_test:
                passed += 1
        except (Exception, CandidateDied) as e:
            if first is None:
                first = (_kind(e), "%s: %s" % (label, _describe(e)))
            if not is_test or early:
                _result(first[0], passed, total, first[1])
    if auto_check:
        if entry not in ns:
            _result("runtime_error", passed, total, "the program does not define %s" % entry)
        try:
            ns["check"](ns[entry])
            passed += 1
        except (Exception, CandidateDied) as e:
            if first is None:
                first = (_kind(e), "check(%s): %s" % (entry, _describe(e)))
    if first is not None:
        _result(first[0], passed, total, first[1])
    _result("pass", passed, total)


try:
    main()
except SystemExit:
    raise
except BaseException as e:  # a broken test program
    _result("sandbox_error", 0, 0, "test program: %s: %s" % (type(e).__name__, e))
