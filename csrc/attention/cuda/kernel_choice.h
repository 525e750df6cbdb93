// GLM52_<NAME>_KERNEL=simt selects the fp32 SIMT kernel (same contract) instead of the tensor-core
// one: the cross-check for the first GPU runs of the HGMMA/QGMMA kernels (see the cuda tests).
#pragma once

#include <cstdlib>
#include <cstring>

namespace glm52::attention {

inline bool simt_requested(const char* variable) {
  const char* choice = std::getenv(variable);
  return choice != nullptr && std::strcmp(choice, "simt") == 0;
}

}  // namespace glm52::attention
