#!/usr/bin/env bash
# C++ verification overhead: per program, `distill verify` (compile in the sandbox, then one
# sandboxed run per stdio case) against the same work done bare: `g++` with the verifier's
# flags, then each case run directly with its input piped in, one program at a time.
#
#  N stdio problems (distinct programs, `#include <cstdio>`, K cases each, all correct),
#  `--code-workers 1`, so both sides run sequentially; wall and CPU (user + sys of the whole
#  process tree) per program, and the difference: what the sandbox adds per program.
#
# Usage: bash benches/cpp_verify_bench.sh [N] [K]   (default 20 programs, 3 cases each)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
k="${2:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
command -v g++ > /dev/null || { echo "no g++ on PATH: nothing to measure"; exit 0; }
cargo build --release --quiet --bin distill
bin="${CARGO_TARGET_DIR:-target}/release/distill"
flags="-O2 -std=c++17 -DONLINE_JUDGE -pipe -fmax-errors=20"   # runners::CPP_FLAGS

python3 - "$work" "$n" "$k" <<'EOF2'
import json, os, random, sys
work, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
os.makedirs(f"{work}/bare", exist_ok=True)
with open(f"{work}/cpp.jsonl", "w") as f:
    for i in range(n):
        c = rng.randint(1, 99)
        src = ("#include <cstdio>\nint main() {\n    long long n, s = 0, x;\n    if (scanf(\"%lld\", &n) != 1) return 1;\n"
               "    for (long long i = 0; i < n; i++) { scanf(\"%lld\", &x); s += x * FACTOR; }\n"
               "    printf(\"%lld\\n\", s);\n}\n").replace("FACTOR", str(c))
        cases = []
        for j in range(k):
            xs = [rng.randint(-1000, 1000) for _ in range(rng.randint(1, 50))]
            inp = "%d\n%s\n" % (len(xs), " ".join(map(str, xs)))
            cases.append({"input": inp, "output": "%d\n" % (sum(xs) * c)})
            with open(f"{work}/bare/p{i}.in{j}", "w") as g:
                g.write(inp)
        with open(f"{work}/bare/p{i}.cpp", "w") as g:
            g.write(src)
        tests = {"kind": "stdio", "language": "cpp", "cases": cases}
        f.write(json.dumps({"id": f"c{i}/0", "task": "code", "tests": tests, "content": "```cpp\n" + src + "```\n"}) + "\n")
EOF2

cat > "$work/bare.sh" <<EOF2
set -e
cd "$work/bare"
for i in \$(seq 0 $((n - 1))); do
  g++ $flags -o p\$i p\$i.cpp
  for j in \$(seq 0 $((k - 1))); do ./p\$i < p\$i.in\$j > /dev/null; done
done
EOF2

echo "C++ verification: $n programs x $k stdio cases, 1 worker, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
echo "g++: $(g++ --version | head -1); flags: $flags"
/usr/bin/time -f "%e %U %S" -o "$work/t-bare" bash "$work/bare.sh"
/usr/bin/time -f "%e %U %S" -o "$work/t-ours" \
  "$bin" verify "$work/cpp.jsonl" --out "$work/out.jsonl" --code-workers 1 2> "$work/stderr.txt"
read -r bw bu bs < "$work/t-bare"
read -r ow ou os < "$work/t-ours"
passed=$(grep -c '"pass":true' "$work/out.jsonl" || true)
iso=$(grep -o '"isolation":"[a-z]*"' "$work/out.jsonl" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')
printf "bare g++ + runs:       %7.1f ms wall, %7.1f ms CPU per program\n" \
  "$(echo "$bw * 1000 / $n" | bc -l)" "$(echo "($bu + $bs) * 1000 / $n" | bc -l)"
printf "distill verify (cpp):  %7.1f ms wall, %7.1f ms CPU per program (%d/%d passed; isolation:%s)\n" \
  "$(echo "$ow * 1000 / $n" | bc -l)" "$(echo "($ou + $os) * 1000 / $n" | bc -l)" "$passed" "$n" "$iso"
printf "sandbox overhead:      %7.1f ms wall, %7.1f ms CPU per program (%d sandbox runs each: 1 compile + %d cases); ratio %.2f\n" \
  "$(echo "($ow - $bw) * 1000 / $n" | bc -l)" "$(echo "($ou + $os - $bu - $bs) * 1000 / $n" | bc -l)" \
  "$((k + 1))" "$k" "$(echo "$ow / $bw" | bc -l)"
