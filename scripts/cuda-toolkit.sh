#!/usr/bin/env bash
# Assembles the parts of the CUDA 13.0 toolkit that `cargo build --features cuda` needs (nvcc,
# headers, cuBLAS, cuRAND, NVRTC, the runtime) from NVIDIA's PyPI wheels into DIR, for machines
# without a system toolkit, and writes DIR/env.sh to source before building. The driver library
# (libcuda) comes with the NVIDIA driver at run time; for linking on a machine without a driver
# the script builds a stub exporting the driver API's names from cudarc's bindings.
#
# Usage: bash scripts/cuda-toolkit.sh [DIR] [COMPUTE_CAP]   (default ~/.cache/distill/cuda13, 90)
# Then:  . DIR/env.sh && cargo build --release --features cuda
set -euo pipefail
dir="${1:-$HOME/.cache/distill/cuda13}"
cap="${2:-90}"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$wheels" \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-curand==10.4.*"
mkdir -p "$dir"
for w in "$wheels"/*.whl; do
  python3 -m zipfile -e "$w" "$wheels/x"
done
cp -r "$wheels"/x/nvidia/cu13/. "$dir"/
chmod +x "$dir"/bin/* "$dir"/nvvm/bin/* 2>/dev/null || true
# Unversioned names for the linker, and lib64 as some build scripts look there.
(cd "$dir/lib" && for f in libcublas libcublasLt libcudart libnvrtc libcurand; do
  ln -sf "$(ls "$f".so.* | head -1)" "$f.so"
done)
ln -sfn lib "$dir/lib64"
# A link-time stub of libcuda.so.1 (never loaded where a driver is installed).
src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)"
if [ -z "$src" ]; then cargo fetch --quiet && src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)"; fi
mkdir -p "$dir/lib/stubs"
grep -oP '^pub unsafe fn \Kcu\w+' "$src/src/driver/sys/mod.rs" | sort -u | awk '{print "void "$1"(void){}"}' > "$wheels/stub.c"
gcc -shared -fPIC -o "$dir/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$wheels/stub.c"
cat > "$dir/env.sh" <<ENV
export CUDA_ROOT="$dir" CUDA_PATH="$dir" CUDA_HOME="$dir"
export PATH="$dir/bin:\$PATH"
export CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$dir/lib:$dir/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
"$dir/bin/nvcc" --version | tail -1
echo "toolkit in $dir; now: . $dir/env.sh && cargo build --release --features cuda"
