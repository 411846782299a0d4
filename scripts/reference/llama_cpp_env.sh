# Build flags for llama-cpp-python's sdist (it vendors llama.cpp and compiles it at install), shared
# by scripts/reference/setup.sh and scripts/ci-python.sh. Source it; set CMAKE_ARGS to override.
#
# AMX is off: on the project's VMs the CPU advertises AMX but ggml's AMX path crashes (SIGSEGV in
# decode for every quantized type), while every AVX-512 extension it uses (VNNI, BF16, VBMI) works.
# Not -DGGML_NATIVE=ON, so a wheel built on one of these machines runs on the others of its kind;
# the AVX-512 set only where the processor has AVX-512 (an AVX2-only machine would die of SIGILL),
# and the wheel cache is keyed on these flags, so each kind of machine keeps its own wheel.
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    _bakeoff_simd="-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
else
    _bakeoff_simd="-DGGML_AVX512=OFF"
fi
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON $_bakeoff_simd -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
unset _bakeoff_simd
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
