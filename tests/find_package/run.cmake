# cmake -P script for the package test: install the dmm build into a scratch
# prefix, check that the installed binaries (dmmctl, hostd) run from it, then
# configure, build and run tests/find_package against it with find_package(dmm)
# (dmm::dmm and dmm::controllers), and build and run the same consumer with
# `pkg-config --cflags --libs dmm-controllers` (which requires dmm) and the
# compiler alone.
#
# -DDMM_BUILD_DIR=... -DDMM_WORK_DIR=... -DDMM_CONSUMER_DIR=...
# [-DDMM_GENERATOR=...] [-DDMM_CXX_COMPILER=...] [-DDMM_BUILD_TYPE=...]
set(consumer_test find_package)
include(${CMAKE_CURRENT_LIST_DIR}/../support/consumer.cmake)

# The installed binaries run from the prefix (--help needs no servers).
foreach(tool dmmctl hostd)
  step("run ${prefix}/bin/${tool} --help" ${prefix}/bin/${tool} --help)
endforeach()

step("configure the consumer" ${CMAKE_COMMAND} ${configure_args})
step("build the consumer" ${CMAKE_COMMAND} --build ${build})
step("run the consumer" ${build}/dmm_consumer)

# The same consumer, built the pkg-config way.
file(GLOB_RECURSE pc_files ${prefix}/*/dmm.pc ${prefix}/*/dmm-controllers.pc)
list(LENGTH pc_files pc_count)
if(NOT pc_count EQUAL 2)
  message(FATAL_ERROR "find_package test: expected one installed dmm.pc and one dmm-controllers.pc under ${prefix}, found: ${pc_files}")
endif()
list(GET pc_files 0 pc_file)
get_filename_component(pc_dir ${pc_file} DIRECTORY)
execute_process(COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${pc_dir} pkg-config --cflags --libs dmm-controllers
                OUTPUT_VARIABLE pc_flags RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "find_package test: pkg-config --cflags --libs dmm-controllers failed (${rc})")
endif()
message(STATUS "find_package test: pkg-config --cflags --libs dmm-controllers: ${pc_flags}")
separate_arguments(pc_args UNIX_COMMAND "${pc_flags}")
set(cxx ${DMM_CXX_COMPILER})
if(NOT cxx)
  set(cxx c++)
endif()
step("build the consumer with pkg-config" ${cxx} ${DMM_CONSUMER_DIR}/main.cpp ${pc_args} -o ${DMM_WORK_DIR}/dmm_consumer_pc)
step("run the pkg-config consumer" ${DMM_WORK_DIR}/dmm_consumer_pc)
