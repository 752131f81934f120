#!/usr/bin/env bash
# Build ExecuTorch's executor_runner (XNNPACK, arm64-v8a) for `fbnet-agent profile --transport adb`.
#
# Usage: ANDROID_NDK=/path/to/ndk device_agents/android/build_runner.sh [EXECUTORCH_SRC] [OUT_DIR]
#   EXECUTORCH_SRC  an executorch checkout with submodules (default: ./executorch, cloned at the tag
#                   matching the installed executorch wheel if missing)
#   OUT_DIR         where executor_runner lands (default: ./android-runner)
# Env: ANDROID_PLATFORM (default android-26; android-24 for Android 7 phones), JOBS.
#
# The options are DEVICES.md section 1.5: timing build (event tracer OFF) with the posix PAL, so the
# `Iteration i of N: X ms` lines arrive on the stderr of `adb shell` (the agent also reads logcat for
# runners built with the Android PAL). Not verified here: no NDK on the build machine.
set -euo pipefail

: "${ANDROID_NDK:?set ANDROID_NDK to the NDK root (r28c is what ExecuTorch CI uses)}"
SRC=${1:-executorch}
OUT=${2:-android-runner}
PLATFORM=${ANDROID_PLATFORM:-android-26}
JOBS=${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}
PY=${PYTHON:-python3}

if [ ! -d "$SRC" ]; then
  VERSION=$("$PY" -c 'from importlib.metadata import version; print(version("executorch"))' 2>/dev/null || echo main)
  REF=$([ "$VERSION" = main ] && echo main || echo "v$VERSION")
  echo "cloning executorch $REF into $SRC"
  git clone --depth 1 --branch "$REF" https://github.com/pytorch/executorch.git "$SRC"
  git -C "$SRC" submodule update --init --recursive --depth 1
fi

BUILD="$SRC/cmake-out-android-bench"
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_TOOLCHAIN_FILE="$ANDROID_NDK/build/cmake/android.toolchain.cmake" \
  --preset android-arm64-v8a -DANDROID_PLATFORM="$PLATFORM" -DCMAKE_BUILD_TYPE=Release \
  -DPYTHON_EXECUTABLE="$(command -v "$PY")" \
  -DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON -DEXECUTORCH_BUILD_EXTENSION_EVALUE_UTIL=ON \
  -DEXECUTORCH_BUILD_EXTENSION_RUNNER_UTIL=ON -DEXECUTORCH_BUILD_XNNPACK=ON \
  -DEXECUTORCH_ENABLE_LOGGING=ON -DEXECUTORCH_PAL_DEFAULT=posix -DEXECUTORCH_ENABLE_EVENT_TRACER=OFF
cmake --build "$BUILD" -j"$JOBS" --target executor_runner

mkdir -p "$OUT"
cp "$BUILD/executor_runner" "$OUT/executor_runner"
"$ANDROID_NDK"/toolchains/llvm/prebuilt/*/bin/llvm-strip "$OUT/executor_runner" 2>/dev/null || true
echo "built $OUT/executor_runner"
echo "profile with: fbnet-agent profile --transport adb --runner $OUT/executor_runner --cpu-mask 80 --threads 1 ..."
