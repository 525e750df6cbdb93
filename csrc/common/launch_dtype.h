// torch dtype -> the element type launchers take (kernel headers never see torch types).
#pragma once

#include "common/dtype.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace glm52 {

inline DType launch_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "glm52: no CUDA kernel for dtype ", t);
  }
}

}  // namespace glm52
