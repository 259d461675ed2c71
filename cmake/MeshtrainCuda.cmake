# CUDA detection. MESHTRAIN_CUDA defaults to ON when nvcc is found; the architectures are fixed to
# sm_80 and sm_90 (never "native": build machines often have no GPU).
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_mt_cuda_default ON)
else()
  set(_mt_cuda_default OFF)
endif()
option(MESHTRAIN_CUDA "Build the CUDA backend" ${_mt_cuda_default})

if(MESHTRAIN_CUDA)
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA 20 flag for nvcc
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "meshtrain: CUDA backend ON (${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "meshtrain: CUDA backend OFF (no nvcc found or MESHTRAIN_CUDA=OFF)")
endif()
