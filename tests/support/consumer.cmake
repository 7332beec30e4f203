# Shared by the cmake -P scripts of the consumer tests (tests/find_package,
# tests/outside): check the arguments, start from an empty DMM_WORK_DIR,
# install the dmm build into ${prefix}, and build `configure_args` for a
# consumer project in ${build}. Set `consumer_test` (the name shown in
# messages) before including it.
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

# Runs a command; a failure stops the test, naming `what`.
function(step what)
  message(STATUS "${consumer_test} test: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${consumer_test} test: ${what} failed (${rc})")
  endif()
endfunction()

set(install_args --install ${DMM_BUILD_DIR} --prefix ${prefix})
set(configure_args -S ${DMM_CONSUMER_DIR} -B ${build} -DCMAKE_PREFIX_PATH=${prefix})
if(DMM_WERROR)
  list(APPEND configure_args -DDMM_WERROR=${DMM_WERROR})
endif()
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
