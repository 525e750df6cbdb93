// The FP8 grouped GEMM's 64x128x128 ping-pong configuration (decode: at most 64 rows per expert).
// Alone in its translation unit: one CUTLASS kernel per file keeps each compile within a few GB.
#include "moe/cuda/fp8_grouped_gemm_sm90_kernel.cuh"

namespace glm52::moe::sm90 {

template cudaError_t run_grouped_gemm<GroupedGemmTile::kM64>(const GroupArrays&, int64_t, int, void*, cudaStream_t);
template int64_t cutlass_workspace_bytes<GroupedGemmTile::kM64>(int64_t, int);

}  // namespace glm52::moe::sm90
