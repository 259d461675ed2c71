# NCCL detection. MESHTRAIN_NCCL defaults to ON when the CUDA backend is on and nccl.h and libnccl
# (2.18 or newer: the communicator splits with ncclCommSplit) are found; it is forced OFF otherwise.
# parallel/ then builds nccl_communicator.cpp, or no_nccl.cpp, whose factory throws "[nccl] not built".
include(CMakeDependentOption)

set(_mt_nccl_usable OFF)
set(_mt_nccl_why "MESHTRAIN_CUDA is OFF")
if(MESHTRAIN_CUDA_EMULATION)
  # tests/cuda_emulation/nccl.cpp: NCCL's API over MPI, so the NCCL paths run under mpiexec on the CPU.
  set(_mt_nccl_usable ON)
  set(NCCL_VERSION "emulated over MPI")
elseif(MESHTRAIN_CUDA)
  # NCCL ships inside the CUDA toolkit on some systems, as a distribution package on others, or in a
  # prefix named by NCCL_ROOT / NCCL_HOME.
  find_path(NCCL_INCLUDE_DIR nccl.h
            HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_INCLUDE_DIRS}
            PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl
               HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_LIBRARY_DIR}
               PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _mt_nccl_defines REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
    string(REGEX REPLACE ".*NCCL_MAJOR ([0-9]+).*" "\\1" _mt_nccl_major "${_mt_nccl_defines}")
    string(REGEX REPLACE ".*NCCL_MINOR ([0-9]+).*" "\\1" _mt_nccl_minor "${_mt_nccl_defines}")
    string(REGEX REPLACE ".*NCCL_PATCH ([0-9]+).*" "\\1" _mt_nccl_patch "${_mt_nccl_defines}")
    set(NCCL_VERSION "${_mt_nccl_major}.${_mt_nccl_minor}.${_mt_nccl_patch}")
    if(NCCL_VERSION VERSION_GREATER_EQUAL 2.18)
      set(_mt_nccl_usable ON)
    else()
      set(_mt_nccl_why "NCCL ${NCCL_VERSION} in ${NCCL_INCLUDE_DIR} is older than 2.18 (no ncclCommSplit)")
    endif()
  else()
    set(_mt_nccl_why "nccl.h or libnccl not found (set NCCL_ROOT to the NCCL prefix)")
  endif()
endif()

# Forced OFF, whatever the cache says, while CUDA is off or NCCL unusable; the user's choice comes
# back once both are there.
cmake_dependent_option(MESHTRAIN_NCCL "Build the NCCL communicator (GPU tensors)" ON "_mt_nccl_usable" OFF)

if(MESHTRAIN_NCCL)
  if(NOT TARGET meshtrain::nccl)
    add_library(meshtrain::nccl INTERFACE IMPORTED)
    if(MESHTRAIN_CUDA_EMULATION)
      set_target_properties(meshtrain::nccl PROPERTIES INTERFACE_LINK_LIBRARIES "meshtrain_cuda_emulation")
    else()
      set_target_properties(meshtrain::nccl PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "${NCCL_LIBRARY};CUDA::cudart")
    endif()
  endif()
  message(STATUS "meshtrain: NCCL communicator ON (NCCL ${NCCL_VERSION} ${NCCL_LIBRARY})")
elseif(_mt_nccl_usable)
  message(STATUS "meshtrain: NCCL communicator OFF (MESHTRAIN_NCCL=OFF)")
else()
  message(STATUS "meshtrain: NCCL communicator OFF (${_mt_nccl_why})")
endif()
