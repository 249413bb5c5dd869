# CMake toolchain file for 64-bit ARM Linux: cmake -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# The definitions live beside the runner's sources, so the installed package can cross-build too.
include("${CMAKE_CURRENT_LIST_DIR}/../runtimes/native/aarch64-linux-gnu.cmake")
