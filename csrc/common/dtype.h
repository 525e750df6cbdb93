// Element types as launchers see them: kernel headers stay free of framework types.
#pragma once

namespace glm52 {

enum class DType { kFloat32, kFloat16, kBFloat16 };

}  // namespace glm52
