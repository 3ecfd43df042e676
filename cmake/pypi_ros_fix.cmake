# Used only when building against the PyPI ROS 2 wheels (the Makefile passes it with
# -DCMAKE_PROJECT_INCLUDE). Those wheels export *__rosidl_generator_py targets whose include
# directories name the wheel build host's interpreter (/opt/python/...). Once the top-level
# directory is configured, point them at this interpreter's headers instead.
function(_qd_fix_pypi_python_includes)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_tgt IN LISTS _targets)
    get_target_property(_dirs ${_tgt} INTERFACE_INCLUDE_DIRECTORIES)
    if(_dirs AND "${_dirs}" MATCHES "/opt/python/")
      list(FILTER _dirs EXCLUDE REGEX "^/opt/python/")
      list(APPEND _dirs ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
      set_target_properties(${_tgt} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_dirs}")
    endif()
  endforeach()
endfunction()
if("${CMAKE_CURRENT_SOURCE_DIR}" STREQUAL "${CMAKE_SOURCE_DIR}")
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _qd_fix_pypi_python_includes)
endif()
