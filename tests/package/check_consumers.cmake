# Script-mode (cmake -P) packaging check, driven by tests/package/CMakeLists.txt.
#
# Required -D variables:
#   MODE                 installed | subdirectory
#   ATTNKIT_SOURCE_DIR   attnkit source tree
#   CONSUMER_SOURCE_DIR  tests/package/consumer
#   WORK_DIR             scratch directory (wiped first)
# Optional: GENERATOR, MAKE_PROGRAM, CXX_COMPILER, BUILD_TYPE (default Release).
#
# installed:    configure attnkit (tests/bench/examples off) -> cmake --install into
#               WORK_DIR/prefix -> configure consumer with find_package -> build -> run.
# subdirectory: configure consumer with add_subdirectory(attnkit) -> build -> run.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE ATTNKIT_SOURCE_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_consumers.cmake: -D ${var}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

# Arguments shared by every nested configure: same generator/compiler, and never pick up
# packages from the user/system package registries.
set(common_args -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
                -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(GENERATOR)
  list(APPEND common_args -G ${GENERATOR})
endif()
if(MAKE_PROGRAM)
  list(APPEND common_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(CXX_COMPILER)
  list(APPEND common_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()

function(run_step name)
  message(STATUS "[package/${MODE}] ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[package/${MODE}] ${name} failed (${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(consumer_build ${WORK_DIR}/consumer-build)

if(MODE STREQUAL "installed")
  set(attnkit_build ${WORK_DIR}/attnkit-build)
  set(prefix ${WORK_DIR}/prefix)
  run_step(
    "configure attnkit" ${CMAKE_COMMAND} -S ${ATTNKIT_SOURCE_DIR} -B ${attnkit_build}
    ${common_args} -DCMAKE_INSTALL_PREFIX=${prefix} -DATTNKIT_BUILD_TESTS=OFF
    -DATTNKIT_BUILD_BENCHMARKS=OFF -DATTNKIT_BUILD_EXAMPLES=OFF)
  run_step("build attnkit" ${CMAKE_COMMAND} --build ${attnkit_build} --config ${BUILD_TYPE})
  run_step("install attnkit" ${CMAKE_COMMAND} --install ${attnkit_build} --config ${BUILD_TYPE})

  foreach(f include/attnkit/attnkit.hpp share/cmake/attnkit/attnkitConfig.cmake
            share/cmake/attnkit/attnkitConfigVersion.cmake share/cmake/attnkit/attnkitTargets.cmake)
    if(NOT EXISTS ${prefix}/${f})
      message(FATAL_ERROR "[package/installed] missing installed file ${prefix}/${f}")
    endif()
  endforeach()
  file(READ ${prefix}/share/cmake/attnkit/attnkitTargets.cmake targets)
  if(targets MATCHES "march|Werror|attnkit_project_flags")
    message(FATAL_ERROR "[package/installed] exported target leaks project-only flags")
  endif()

  run_step(
    "configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${consumer_build}
    ${common_args} -DATTNKIT_CONSUMER_MODE=installed -DCMAKE_PREFIX_PATH=${prefix})

  # Make sure the consumer really used the freshly installed copy.
  file(STRINGS ${consumer_build}/CMakeCache.txt attnkit_dir_line REGEX "^attnkit_DIR:")
  string(REGEX REPLACE "^attnkit_DIR:[A-Z]+=" "" attnkit_dir "${attnkit_dir_line}")
  file(REAL_PATH "${attnkit_dir}" attnkit_dir)
  file(REAL_PATH "${prefix}" real_prefix)
  string(FIND "${attnkit_dir}" "${real_prefix}/" pos)
  if(NOT pos EQUAL 0)
    message(FATAL_ERROR "[package/installed] consumer found attnkit at '${attnkit_dir}', "
                        "not in ${real_prefix}")
  endif()
elseif(MODE STREQUAL "subdirectory")
  run_step(
    "configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${consumer_build}
    ${common_args} -DATTNKIT_CONSUMER_MODE=subdirectory -DATTNKIT_SOURCE_DIR=${ATTNKIT_SOURCE_DIR})
else()
  message(FATAL_ERROR "check_consumers.cmake: unknown MODE '${MODE}'")
endif()

run_step("build consumer" ${CMAKE_COMMAND} --build ${consumer_build} --config ${BUILD_TYPE})

# Single-config generators put the executable in the build dir, multi-config ones in <config>/.
set(exe ${consumer_build}/consumer)
if(NOT EXISTS ${exe} AND EXISTS ${consumer_build}/${BUILD_TYPE}/consumer)
  set(exe ${consumer_build}/${BUILD_TYPE}/consumer)
endif()
run_step("run consumer" ${exe})
message(STATUS "[package/${MODE}] OK")
