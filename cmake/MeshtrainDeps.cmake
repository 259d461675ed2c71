# Third-party dependencies, all from Debian packages (scripts/setup.sh installs them).
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(MPI REQUIRED COMPONENTS C CXX)
# OpenBLAS's OpenMP build shares the OpenMP thread pool with our kernels; the pthread build keeps a
# second pool whose spinning threads fight OpenMP's for the cores (about 1.5x slower steps on 2 cores).
# Looked for under /usr and under every prefix of CMAKE_PREFIX_PATH (the Debian packages unpacked
# elsewhere, as on a machine without a package registry: scripts/device_check.sh).
set(meshtrain_openblas_openmp_dirs)
string(REPLACE ":" ";" meshtrain_env_prefixes "$ENV{CMAKE_PREFIX_PATH}")
foreach(prefix IN LISTS CMAKE_PREFIX_PATH meshtrain_env_prefixes ITEMS /usr)
  list(APPEND meshtrain_openblas_openmp_dirs ${prefix}/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp/cmake)
endforeach()
find_package(OpenBLAS CONFIG QUIET NAMES OpenBLAS PATHS ${meshtrain_openblas_openmp_dirs} NO_DEFAULT_PATH)
# A copy unpacked under another prefix keeps a CMake file that names /usr: the same paths under the
# copy's own usr/ (five levels above the file's folder, .../usr/lib/<arch>/openblas-openmp/cmake/openblas).
if(OpenBLAS_FOUND AND NOT EXISTS "${OpenBLAS_LIBRARIES}")
  get_filename_component(meshtrain_openblas_usr "${OpenBLAS_DIR}/../../../../.." ABSOLUTE)
  string(REGEX REPLACE "^/usr/" "${meshtrain_openblas_usr}/" OpenBLAS_LIBRARIES "${OpenBLAS_LIBRARIES}")
  string(REGEX REPLACE "^/usr/" "${meshtrain_openblas_usr}/" OpenBLAS_INCLUDE_DIRS "${OpenBLAS_INCLUDE_DIRS}")
  if(NOT EXISTS "${OpenBLAS_LIBRARIES}" OR NOT EXISTS "${OpenBLAS_INCLUDE_DIRS}")
    message(STATUS "meshtrain: passing over ${OpenBLAS_DIR}: its library is neither where it says nor under "
                   "${meshtrain_openblas_usr}")
    set(OpenBLAS_FOUND FALSE)
  endif()
endif()
if(NOT OpenBLAS_FOUND)
  find_package(OpenBLAS CONFIG REQUIRED)
  message(WARNING "meshtrain: using ${OpenBLAS_LIBRARIES}; install libopenblas-openmp-dev for the OpenMP build")
endif()
message(STATUS "meshtrain: OpenBLAS ${OpenBLAS_LIBRARIES}")
set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(WARNING "meshtrain: HDF5 found is not the parallel (MPI) flavour; install libhdf5-openmpi-dev")
endif()
find_package(ZLIB REQUIRED)
# Intel ISA-L (Debian's libisal-dev): the CRC-32 of checkpoint data at memory speed (core/checksum.h).
find_path(ISAL_INCLUDE_DIR isa-l/crc.h REQUIRED)
find_library(ISAL_LIBRARY isal REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Threads REQUIRED)
# cpp-httplib (Debian's libcpp-httplib-dev: the header and a shared library built with OpenSSL, zlib
# and Brotli). Through pkg-config where there is one; otherwise (a machine without pkg-config that
# carries the Debian packages) by its files, with the definitions the package's .pc file gives.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
endif()
add_library(meshtrain::httplib INTERFACE IMPORTED)
if(TARGET PkgConfig::HTTPLIB)
  set_target_properties(meshtrain::httplib PROPERTIES INTERFACE_LINK_LIBRARIES PkgConfig::HTTPLIB)
else()
  find_path(HTTPLIB_INCLUDE_DIR httplib.h)
  find_library(HTTPLIB_LIBRARY cpp-httplib)
  if(NOT HTTPLIB_INCLUDE_DIR OR NOT HTTPLIB_LIBRARY)
    message(FATAL_ERROR "meshtrain: cpp-httplib not found (neither through pkg-config nor as httplib.h and "
                        "libcpp-httplib.so); install libcpp-httplib-dev (bash scripts/setup.sh)")
  endif()
  message(STATUS "meshtrain: cpp-httplib ${HTTPLIB_LIBRARY} (no pkg-config)")
  set_target_properties(meshtrain::httplib PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES ${HTTPLIB_INCLUDE_DIR}
    INTERFACE_LINK_LIBRARIES ${HTTPLIB_LIBRARY}
    INTERFACE_COMPILE_DEFINITIONS "CPPHTTPLIB_OPENSSL_SUPPORT;CPPHTTPLIB_ZLIB_SUPPORT;CPPHTTPLIB_BROTLI_SUPPORT")
endif()
if(MESHTRAIN_TESTS)
  find_package(GTest REQUIRED)
endif()
if(MESHTRAIN_BENCH)
  find_package(benchmark REQUIRED)
endif()

# OpenBLAS ships a config file without an imported target; make one.
if(NOT TARGET meshtrain::openblas)
  add_library(meshtrain::openblas INTERFACE IMPORTED)
  set_target_properties(meshtrain::openblas PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${OpenBLAS_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${OpenBLAS_LIBRARIES}")
endif()
if(NOT TARGET meshtrain::isal)
  add_library(meshtrain::isal INTERFACE IMPORTED)
  set_target_properties(meshtrain::isal PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${ISAL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${ISAL_LIBRARY}")
endif()
if(NOT TARGET meshtrain::hdf5)
  add_library(meshtrain::hdf5 INTERFACE IMPORTED)
  set_target_properties(meshtrain::hdf5 PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${HDF5_C_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${HDF5_C_LIBRARIES}"
    INTERFACE_COMPILE_DEFINITIONS "${HDF5_C_DEFINITIONS}")
endif()
