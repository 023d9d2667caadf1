#!/usr/bin/env bash
# Builds ferry's test workloads into workloads/bin/*.wasm.
#   C sources (workloads/c/*.c)   -> clang --target=wasm32-wasi -O2
#   AssemblyScript (workloads/as) -> asc with @assemblyscript/wasi-shim
# Installs the C toolchain from Debian if it is missing. The output is
# deterministic: rebuilding with the same toolchain gives identical bytes.
# usage: bash workloads/build.sh [name...]   (default: all)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$here"

need_apt=0
command -v clang >/dev/null 2>&1 || need_apt=1
command -v wasm-ld >/dev/null 2>&1 || need_apt=1
[ -e /usr/lib/wasm32-wasi/libc.a ] || [ -e /usr/share/wasi-sysroot/lib/wasm32-wasi/libc.a ] || need_apt=1
compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a' >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
  echo "build.sh: installing clang, lld, wasi-libc, libclang-rt-14-dev-wasm32" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y clang lld wasi-libc libclang-rt-14-dev-wasm32
fi

if [ ! -x "$root/node_modules/.bin/asc" ] || [ ! -d "$root/node_modules/@assemblyscript/wasi-shim" ]; then
  echo "build.sh: installing npm dependencies (assemblyscript, @assemblyscript/wasi-shim)" >&2
  (cd "$root" && npm install --no-audit --no-fund)
fi

# clang runs any wasm-opt it finds on PATH after linking (binaryen's, from
# node_modules/.bin under `npm run`, for one): give it a PATH with only the
# tools it needs, so the output does not depend on the caller's PATH.
toolbin="$(mktemp -d)"
trap 'rm -rf "$toolbin"' EXIT
ln -s "$(command -v clang)" "$toolbin/clang"
for ld in "$(dirname "$(command -v wasm-ld)")"/wasm-ld*; do ln -s "$ld" "$toolbin/$(basename "$ld")"; done

# Per-workload link flags (memory layout).
declare -A LDFLAGS=(
  # The thesis's getpid process has a 56 KiB address space: one wasm page.
  [getpid]="-Wl,-z,stack-size=16384 -Wl,--initial-memory=65536"
  # 100 KB array + 16 KiB stack + stdio: two wasm pages.
  [reference]="-Wl,-z,stack-size=16384 -Wl,--initial-memory=131072"
  # Deep recursion with on-stack arrays: 1 MiB shadow stack.
  [recurse]="-Wl,-z,stack-size=1048576"
)

mkdir -p bin
want=("$@")
selected() {
  [ ${#want[@]} -eq 0 ] && return 0
  local w
  for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

for src in c/*.c; do
  name="$(basename "$src" .c)"
  selected "$name" || continue
  # shellcheck disable=SC2086
  env -i PATH="$toolbin" clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror \
    -Wno-unused-parameter -Wl,--strip-debug ${LDFLAGS[$name]:-} -o "bin/$name.wasm" "$src"
  echo "built bin/$name.wasm ($(stat -c %s "bin/$name.wasm") bytes)"
done

for src in as/*.ts; do
  name="$(basename "$src" .ts)"
  selected "$name" || continue
  (cd "$root" && node node_modules/assemblyscript/bin/asc.js "workloads/$src" \
    --config node_modules/@assemblyscript/wasi-shim/asconfig.json \
    -O3 --noAssert -o "workloads/bin/$name.wasm")
  echo "built bin/$name.wasm ($(stat -c %s "bin/$name.wasm") bytes)"
done
