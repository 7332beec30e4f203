# cmake -P script for the outside test: install the dmm build into a scratch
# prefix, configure and build tests/outside against it with find_package(dmm),
# and run flow_check on the servers named by DMM_TEST_POSTGRES_URL and
# DMM_TEST_NATS_URL (scripts/test sets them; flow_check fails without them).
#
# -DDMM_BUILD_DIR=... -DDMM_WORK_DIR=... -DDMM_CONSUMER_DIR=...
# [-DDMM_GENERATOR=...] [-DDMM_CXX_COMPILER=...] [-DDMM_BUILD_TYPE=...] [-DDMM_WERROR=ON]
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
  message(STATUS "outside test: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "outside test: ${what} failed (${rc})")
  endif()
endfunction()

set(install_args --install ${DMM_BUILD_DIR} --prefix ${prefix})
set(configure_args -S ${DMM_CONSUMER_DIR} -B ${build} -DCMAKE_PREFIX_PATH=${prefix} -DDMM_WERROR=${DMM_WERROR})
if(DMM_BUILD_TYPE)
  list(APPEND install_args --config ${DMM_BUILD_TYPE})
  list(APPEND configure_args -DCMAKE_BUILD_TYPE=${DMM_BUILD_TYPE})
endif()
if(DMM_GENERATOR)
  list(APPEND configure_args -G ${DMM_GENERATOR})
endif()
if(DMM_CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${DMM_CXX_COMPILER})
endif()
step("install ${DMM_BUILD_DIR} into ${prefix}" ${CMAKE_COMMAND} ${install_args})
step("configure tests/outside" ${CMAKE_COMMAND} ${configure_args})
step("build flow_check" ${CMAKE_COMMAND} --build ${build} -j2)
step("run flow_check" ${build}/flow_check)
