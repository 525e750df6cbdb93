# CUDA kernels (csrc/**/cuda/*.cu) and the host code that launches them (csrc/**/cuda/*.cpp).
# setup.py passes CMAKE_CUDA_COMPILER, CUDAToolkit_ROOT, CMAKE_CUDA_ARCHITECTURES and
# GLM52_CUTLASS_INCLUDE_DIR.
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # share torch's cudart instead of a static copy
# ccache when present, and ptxas warning C7510 (wgmma serialized) turned into an error.
set(CMAKE_CUDA_COMPILER_LAUNCHER "${CMAKE_CURRENT_SOURCE_DIR}/cmake/cuda_launcher.sh")
if(GLM52_CCACHE)
  list(APPEND CMAKE_CUDA_COMPILER_LAUNCHER "${GLM52_CCACHE}")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
message(STATUS "glm52: CUDA ${CUDAToolkit_VERSION} at ${CUDAToolkit_BIN_DIR}, archs ${CMAKE_CUDA_ARCHITECTURES}")

if(NOT EXISTS "${GLM52_CUTLASS_INCLUDE_DIR}/cutlass/version.h")
  message(FATAL_ERROR "glm52: GLM52_CUTLASS_INCLUDE_DIR='${GLM52_CUTLASS_INCLUDE_DIR}' holds no cutlass/version.h")
endif()

file(GLOB_RECURSE GLM52_CUDA_SOURCES CONFIGURE_DEPENDS csrc/*/cuda/*.cu csrc/*/cuda/*.cpp)
target_sources(_C PRIVATE ${GLM52_CUDA_SOURCES})
target_include_directories(_C SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS} "${GLM52_CUTLASS_INCLUDE_DIR}")

# Minimal toolkits lack the cuBLAS/cuSPARSE headers torch's CUDA headers include; torch's own
# nvidia-* wheels carry them. Searched after the toolkit, so a full toolkit wins.
if(NOT EXISTS "${CUDAToolkit_INCLUDE_DIRS}/cublas_v2.h")
  file(GLOB _wheel_includes LIST_DIRECTORIES true "${GLM52_SITE_PACKAGES}/nvidia/*/include")
  foreach(_dir IN LISTS _wheel_includes)
    if(EXISTS "${_dir}/cublas_v2.h" OR EXISTS "${_dir}/cusparse.h")
      message(STATUS "glm52: toolkit lacks cuBLAS/cuSPARSE headers, using ${_dir}")
      target_include_directories(_C SYSTEM AFTER PRIVATE "${_dir}")
    endif()
  endforeach()
endif()

target_compile_definitions(_C PRIVATE
  GLM52_WITH_CUDA=1
  GLM52_CUDA_ARCHS="${CMAKE_CUDA_ARCHITECTURES}")
# -DNDEBUG always: device asserts make ptxas serialize wgmma (C7510), which the launcher rejects.
target_compile_options(_C PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:
  -DNDEBUG --expt-relaxed-constexpr --expt-extended-lambda -lineinfo -Xcudafe=--diag_suppress=177>)
foreach(_lib c10_cuda torch_cuda)
  find_library(GLM52_LIB_${_lib} ${_lib} PATHS "${GLM52_TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(_C PRIVATE "${GLM52_LIB_${_lib}}")
endforeach()
target_link_libraries(_C PRIVATE CUDA::cudart)
