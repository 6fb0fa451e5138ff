# attnkit MPI tests: distributed attention (include/attnkit/distributed/mpi.hpp) run under
# mpiexec at 1, 2, 3 and 4 ranks. Not Catch2-discovered: test_mpi_attention has its own main()
# (MPI_Init ... MPI_Finalize) and exits non-zero on every rank when any check failed on any rank.
# Included (include(), not add_subdirectory: its compile job is among the first Ninja starts)
# from tests/CMakeLists.txt when MPI_CXX_FOUND.

add_executable(test_mpi_attention ${CMAKE_CURRENT_LIST_DIR}/test_mpi_attention.cpp)
target_include_directories(test_mpi_attention PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..) # support/
# attnkit_test_cpu_kernels: the suite's one copy of the CPU tile kernels, declared extern here.
target_link_libraries(test_mpi_attention PRIVATE attnkit_test_cpu_kernels attnkit::attnkit
                                                 attnkit_project_flags MPI::MPI_CXX)
target_compile_options(test_mpi_attention PRIVATE ${ATTNKIT_TEST_SANITIZER_OPTIONS}
                                                  ${ATTNKIT_TEST_TILE_KERNELS_EXTERN})

# Open MPI refuses more ranks than cores without --oversubscribe, and refuses to run as root
# (containers, CI) without --allow-run-as-root. MPICH needs neither and accepts neither.
set(_attnkit_mpiexec_flags "")
execute_process(
  COMMAND ${MPIEXEC_EXECUTABLE} --version
  OUTPUT_VARIABLE _attnkit_mpiexec_version
  ERROR_VARIABLE _attnkit_mpiexec_version
  RESULT_VARIABLE _attnkit_mpiexec_result)
if(_attnkit_mpiexec_version MATCHES "Open MPI|OpenRTE")
  list(APPEND _attnkit_mpiexec_flags --oversubscribe)
  execute_process(
    COMMAND id -u
    OUTPUT_VARIABLE _attnkit_uid
    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_attnkit_uid STREQUAL "0")
    list(APPEND _attnkit_mpiexec_flags --allow-run-as-root)
  endif()
endif()

# Open MPI's own allocations (its shared-memory transport, the PMIx client) are still held at
# exit and LeakSanitizer reports them; leak checking is off for these tests only (ASan's other
# checks stay on, and the non-MPI tests keep detect_leaks=1).
set(_attnkit_mpi_test_environment "")
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize=[^ ]*address")
  list(APPEND _attnkit_mpi_test_environment
       "ASAN_OPTIONS=detect_leaks=0:strict_string_checks=1:detect_stack_use_after_return=1")
endif()

foreach(ranks 1 2 3 4)
  add_test(NAME test_mpi_attention/ranks_${ranks}
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${_attnkit_mpiexec_flags}
                   ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_mpi_attention> ${MPIEXEC_POSTFLAGS})
  # A rank that hangs instead of throwing is a failure: the timeout turns it into one.
  set_tests_properties(test_mpi_attention/ranks_${ranks} PROPERTIES LABELS mpi TIMEOUT 300 PROCESSORS ${ranks})
  if(_attnkit_mpi_test_environment)
    set_tests_properties(test_mpi_attention/ranks_${ranks}
                         PROPERTIES ENVIRONMENT "${_attnkit_mpi_test_environment}")
  endif()
endforeach()
