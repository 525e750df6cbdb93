// glm52_ext._C: defines the glm52 op library (each op family adds its ops from its own file with
// TORCH_LIBRARY_FRAGMENT) and the pybind11 module that reports how the extension was built.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#if defined(GLM52_WITH_CUDA)
#include <cuda_runtime_api.h>
#include <cutlass/version.h>
#endif

#include <string>

namespace py = pybind11;

TORCH_LIBRARY(glm52, m) {}

namespace {

py::dict build_info() {
  py::dict info;
  info["torch_version"] = GLM52_TORCH_VERSION;
  info["cxx_compiler"] = GLM52_CXX_COMPILER;
#if defined(GLM52_WITH_CUDA)
  info["cuda"] = true;
  info["cuda_version"] =
      std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  py::list archs;
  std::string arch_list = GLM52_CUDA_ARCHS;  // CMake form: "90a-real;80-virtual"
  for (size_t start = 0; start <= arch_list.size();) {
    size_t end = arch_list.find(';', start);
    if (end == std::string::npos) end = arch_list.size();
    if (end > start) archs.append(arch_list.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cutlass_version"] = std::to_string(CUTLASS_MAJOR) + "." + std::to_string(CUTLASS_MINOR) +
                            "." + std::to_string(CUTLASS_PATCH);
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::list();
  info["cutlass_version"] = py::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "glm52 kernels: registers torch.ops.glm52.* and reports build facts";
  m.def("build_info", &build_info, "How this extension was built: CUDA on/off, archs, versions.");
}
