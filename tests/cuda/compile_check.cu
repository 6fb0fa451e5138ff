// Compile-only check (scripts/test): the CUDA umbrella header must build with nvcc -std=c++20
// for every supported architecture. Nothing is launched, so no GPU is needed.
#include <attnkit/cuda.cuh>

int main() { return 0; }
