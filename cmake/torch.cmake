# glm52::torch: torch's headers and the few libraries the extension needs, taken from the Python
# torch install. Deliberately not find_package(Torch): its config guesses the CUDA toolkit root on
# its own (wrong when nvcc is a wrapper script) and lists libraries we do not link (nvrtc).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_facts OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "glm52: cannot import torch with ${Python_EXECUTABLE}")
endif()
string(REPLACE "\n" ";" _torch_facts "${_torch_facts}")
list(GET _torch_facts 0 GLM52_TORCH_DIR)
list(GET _torch_facts 1 _torch_abi)
list(GET _torch_facts 2 GLM52_TORCH_VERSION)
set(GLM52_TORCH_LIBRARY_DIR "${GLM52_TORCH_DIR}/lib")
get_filename_component(GLM52_SITE_PACKAGES "${GLM52_TORCH_DIR}/.." ABSOLUTE)
message(STATUS "glm52: torch ${GLM52_TORCH_VERSION} at ${GLM52_TORCH_DIR}")

add_library(glm52_torch INTERFACE)
add_library(glm52::torch ALIAS glm52_torch)
# torch/include also carries the pybind11 headers torch was built with; we use those, so the
# extension and torch never disagree on pybind11 internals.
target_include_directories(glm52_torch SYSTEM INTERFACE
  "${GLM52_TORCH_DIR}/include"
  "${GLM52_TORCH_DIR}/include/torch/csrc/api/include")
target_compile_definitions(glm52_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi})
foreach(_lib c10 torch_cpu torch)
  find_library(GLM52_LIB_${_lib} ${_lib} PATHS "${GLM52_TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(glm52_torch INTERFACE "${GLM52_LIB_${_lib}}")
endforeach()
