# cmake -P script for the outside test: install the dmm build into a scratch
# prefix, configure and build tests/outside against it with find_package(dmm),
# and run flow_check and steps_check on the servers named by
# DMM_TEST_POSTGRES_URL and DMM_TEST_NATS_URL (scripts/test sets them; the
# checks fail without them).
#
# -DDMM_BUILD_DIR=... -DDMM_WORK_DIR=... -DDMM_CONSUMER_DIR=...
# [-DDMM_GENERATOR=...] [-DDMM_CXX_COMPILER=...] [-DDMM_BUILD_TYPE=...] [-DDMM_WERROR=ON]
set(consumer_test outside)
include(${CMAKE_CURRENT_LIST_DIR}/../support/consumer.cmake)
step("configure tests/outside" ${CMAKE_COMMAND} ${configure_args})
step("build flow_check and steps_check" ${CMAKE_COMMAND} --build ${build} -j2)
step("run flow_check" ${build}/flow_check)
step("run steps_check" ${build}/steps_check)
