# cmake -P script for the find_package test: install the dmm build into a
# scratch prefix, then configure, build and run tests/find_package against it.
#
# -DDMM_BUILD_DIR=... -DDMM_WORK_DIR=... -DDMM_CONSUMER_DIR=...
# [-DDMM_GENERATOR=...] [-DDMM_CXX_COMPILER=...] [-DDMM_BUILD_TYPE=...]
foreach(var DMM_BUILD_DIR DMM_WORK_DIR DMM_CONSUMER_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "${var} is required")
  endif()
endforeach()

set(prefix ${DMM_WORK_DIR}/prefix)
set(build ${DMM_WORK_DIR}/build)
file(REMOVE_RECURSE ${DMM_WORK_DIR})
file(MAKE_DIRECTORY ${DMM_WORK_DIR})

function(step what)
  message(STATUS "find_package test: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "find_package test: ${what} failed (${rc})")
  endif()
endfunction()

set(install_args --install ${DMM_BUILD_DIR} --prefix ${prefix})
if(DMM_BUILD_TYPE)
  list(APPEND install_args --config ${DMM_BUILD_TYPE})
endif()
step("install ${DMM_BUILD_DIR} into ${prefix}" ${CMAKE_COMMAND} ${install_args})

set(configure_args -S ${DMM_CONSUMER_DIR} -B ${build} -DCMAKE_PREFIX_PATH=${prefix})
if(DMM_GENERATOR)
  list(APPEND configure_args -G ${DMM_GENERATOR})
endif()
if(DMM_CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${DMM_CXX_COMPILER})
endif()
if(DMM_BUILD_TYPE)
  list(APPEND configure_args -DCMAKE_BUILD_TYPE=${DMM_BUILD_TYPE})
endif()
step("configure the consumer" ${CMAKE_COMMAND} ${configure_args})
step("build the consumer" ${CMAKE_COMMAND} --build ${build})
step("run the consumer" ${build}/dmm_consumer)
