# Corpus replay of the fuzz targets in the normal build (fuzz/CMakeLists.txt): every
# seed and regression input of fuzz/corpus/ runs through its target under CTest
# (labels unit;fuzz). A FISHERD_FUZZ=ON build adds fuzz/ from the top CMakeLists.txt
# instead, with libFuzzer binaries.
if(NOT FISHERD_FUZZ)
  add_subdirectory(${PROJECT_SOURCE_DIR}/fuzz ${PROJECT_BINARY_DIR}/fuzz)
endif()
