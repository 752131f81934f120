#!/usr/bin/env bash
# Build a runner for `fbnet-agent profile --transport adb` (arm64-v8a) with the Android NDK.
#
# Usage: ANDROID_NDK=/path/to/ndk device_agents/android/build_runner.sh [EXECUTORCH_SRC] [OUT_DIR]
#   EXECUTORCH_SRC  an executorch checkout with submodules (default: ./executorch, cloned at the tag
#                   of the installed executorch wheel, e.g. v1.5.1, if missing)
#   OUT_DIR         where the binaries land (default: ./android-runner)
# Env: ANDROID_PLATFORM (default android-26; android-24 for Android 7 phones), JOBS,
#      UPSTREAM=1 to also build upstream's executor_runner (the old per-op path).
#
# Builds ExecuTorch for Android (XNNPACK, optimized kernels, extension/module, ETDump) from the same
# tag as the wheel the ops were exported with, installs it under $SRC/cmake-out-android-install, then
# builds OUR runner (device_agents/runner/fbnet_runner.cpp, the same source as the host build) against
# it: OUT_DIR/fbnet-runner. Profile with
#   fbnet-agent profile --transport adb --runner OUT_DIR/fbnet-runner --cpu-mask 80 --threads 1 ...
#
# NOT verified here: the build machine has no NDK, so this script has never run end to end. What is
# verified: the same runner source builds for the host against the wheel (`make runner`) and runs
# through the adb double (tests/test_agent_native.py).
set -euo pipefail

: "${ANDROID_NDK:?set ANDROID_NDK to the NDK root (r28c is what ExecuTorch CI uses)}"
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${1:-executorch}
OUT=${2:-android-runner}
PLATFORM=${ANDROID_PLATFORM:-android-26}
JOBS=${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}
PY=${PYTHON:-python3}
TOOLCHAIN="$ANDROID_NDK/build/cmake/android.toolchain.cmake"
VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("executorch").split("+")[0])' 2>/dev/null || echo main)

if [ ! -d "$SRC" ]; then
  REF=$([ "$VERSION" = main ] && echo main || echo "v$VERSION")
  echo "cloning executorch $REF into $SRC"
  git clone --depth 1 --branch "$REF" https://github.com/pytorch/executorch.git "$SRC"
  git -C "$SRC" submodule update --init --recursive --depth 1
fi

BUILD="$SRC/cmake-out-android-bench"
PREFIX="$SRC/cmake-out-android-install"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" \
  --preset android-arm64-v8a -DANDROID_PLATFORM="$PLATFORM" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DPYTHON_EXECUTABLE="$(command -v "$PY")" \
  -DEXECUTORCH_BUILD_XNNPACK=ON -DEXECUTORCH_BUILD_KERNELS_OPTIMIZED=ON \
  -DEXECUTORCH_BUILD_EXTENSION_MODULE=ON -DEXECUTORCH_BUILD_EXTENSION_DATA_LOADER=ON \
  -DEXECUTORCH_BUILD_EXTENSION_FLAT_TENSOR=ON -DEXECUTORCH_BUILD_EXTENSION_NAMED_DATA_MAP=ON \
  -DEXECUTORCH_BUILD_EXTENSION_TENSOR=ON -DEXECUTORCH_BUILD_DEVTOOLS=ON -DEXECUTORCH_ENABLE_EVENT_TRACER=ON \
  -DEXECUTORCH_BUILD_EXECUTOR_RUNNER="${UPSTREAM:-0}" -DEXECUTORCH_BUILD_EXTENSION_EVALUE_UTIL=ON \
  -DEXECUTORCH_BUILD_EXTENSION_RUNNER_UTIL=ON -DEXECUTORCH_ENABLE_LOGGING=ON -DEXECUTORCH_PAL_DEFAULT=posix
cmake --build "$BUILD" -j"$JOBS"
cmake --install "$BUILD"

# our runner, from the same source as the host build
cmake -S "$HERE/../runner" -B "$BUILD-fbnet-runner" -G "${GENERATOR:-Unix Makefiles}" \
  -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM="$PLATFORM" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_ROOT_PATH="$PREFIX" \
  -DFBNET_RUNNER_SOURCE_BUILD=ON -DFBNET_EXECUTORCH_VERSION="$VERSION"
cmake --build "$BUILD-fbnet-runner" -j"$JOBS"

mkdir -p "$OUT"
cp "$BUILD-fbnet-runner/fbnet-runner" "$OUT/fbnet-runner"
"$ANDROID_NDK"/toolchains/llvm/prebuilt/*/bin/llvm-strip "$OUT/fbnet-runner" 2>/dev/null || true
if [ "${UPSTREAM:-0}" = 1 ]; then cp "$BUILD/executor_runner" "$OUT/executor_runner"; fi
echo "built $OUT/fbnet-runner"
echo "profile with: fbnet-agent profile --transport adb --runner $OUT/fbnet-runner --cpu-mask 80 --threads 1 ..."
# upstream's runner does not print its version: it goes beside the binary (the agent records it, with
# the binary's sha256, as the run's runtime version)
if [ "${UPSTREAM:-0}" = 1 ]; then
  echo "executorch $(git -C "$SRC" describe --tags --always 2>/dev/null || echo unknown)" > "$OUT/executor_runner.version"
fi
