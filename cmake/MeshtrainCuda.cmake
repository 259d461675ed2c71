# CUDA detection. MESHTRAIN_CUDA defaults to ON when nvcc is found; the architectures are fixed to
# sm_80 and sm_90 (never "native": build machines often have no GPU).
option(MESHTRAIN_CUDA_EMULATION
       "Build the CUDA sources with the host compiler over the CPU emulation in tests/cuda_emulation (no GPU, no nvcc)"
       OFF)
if(MESHTRAIN_CUDA_EMULATION)
  # The CUDA backend is built, but as host C++: each .cu is rewritten (launch syntax) into the build
  # tree and compiled against the emulation's headers; the emulation library stands in for cudart
  # and cuBLASLt, and NCCL (over MPI: tests/cuda_emulation/nccl.cpp).
  set(MESHTRAIN_CUDA ON)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  set(MESHTRAIN_CUDART meshtrain_cuda_emulation)
  set(MESHTRAIN_CUBLASLT meshtrain_cuda_emulation)
  message(STATUS "meshtrain: CUDA sources built for the CPU emulation (tests/cuda_emulation)")
  # meshtrain_cuda_sources(OUT a.cu b.cu ...): the host-C++ copies of the sources, made at build time.
  function(meshtrain_cuda_sources out)
    set(generated)
    foreach(cu ${ARGN})
      file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${cu})
      set(cpp ${PROJECT_BINARY_DIR}/cuda_emulated/${rel}.cpp)
      add_custom_command(OUTPUT ${cpp}
                         COMMAND Python3::Interpreter ${PROJECT_SOURCE_DIR}/tests/cuda_emulation/rewrite_launches.py
                                 ${cu} ${cpp}
                         DEPENDS ${cu} ${PROJECT_SOURCE_DIR}/tests/cuda_emulation/rewrite_launches.py
                         COMMENT "Rewriting ${rel} for the CUDA emulation")
      list(APPEND generated ${cpp})
    endforeach()
    set(${out} ${generated} PARENT_SCOPE)
  endfunction()
  return()
endif()

function(meshtrain_cuda_sources out)
  set(${out} ${ARGN} PARENT_SCOPE)
endfunction()
set(MESHTRAIN_CUDART CUDA::cudart)
set(MESHTRAIN_CUBLASLT CUDA::cublasLt)

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
  # Debian 12's CMake (3.25.1, its FindCUDAToolkit as shipped) fails when the toolkit has no nvToolsExt
  # library (CUDA 12.9 and later): it marks that library's target deprecated without checking that it
  # exists, but only for projects requiring CMake 3.25 or newer. Look the toolkit up as a 3.24 project.
  set(_mt_min_version ${CMAKE_MINIMUM_REQUIRED_VERSION})
  if(CMAKE_VERSION VERSION_LESS 3.26)
    set(CMAKE_MINIMUM_REQUIRED_VERSION 3.24)
  endif()
  find_package(CUDAToolkit REQUIRED)
  set(CMAKE_MINIMUM_REQUIRED_VERSION ${_mt_min_version})
  message(STATUS "meshtrain: CUDA backend ON (${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "meshtrain: CUDA backend OFF (no nvcc found or MESHTRAIN_CUDA=OFF)")
endif()
