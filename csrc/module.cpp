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

// An empty string (no version or commit known at build time) reads as None.
py::object optional_str(const char* s) { return *s ? py::object(py::str(s)) : py::object(py::none()); }

py::dict build_info() {
  py::dict info;
  info["version"] = optional_str(GLM52_VERSION);
  info["git_commit"] = optional_str(GLM52_GIT_COMMIT);
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
  m.def("build_info", &build_info, "How this extension was built: version, commit, CUDA on/off, archs, versions.");
  // The ops' fake (meta) implementations for torch.compile live in Python beside their wrappers
  // (glm52_ext.ops): import them now, so loading _C alone is enough to trace the ops. The module
  // goes into sys.modules first, so the `from .. import _C` in glm52_ext.ops finds it instead of
  // loading the extension a second time.
  py::module_::import("sys").attr("modules")["glm52_ext._C"] = m;
  py::module_::import("glm52_ext.ops");
}
