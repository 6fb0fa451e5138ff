# Smoke tests of attnkit-eviction-harness (ctest runs this script with cmake -P).
#
#   cmake -DHARNESS=<exe> -DWORK_DIR=<dir> -DMODE=synthetic|trace -P smoke_test.cmake
#
# synthetic: a small synthetic run (--tokens 512 --layers 2) must complete, write the CSV header
#            exactly, one row per (policy, compression) plus the full row, every policy present,
#            the full row exact (rel_error 0, mass_kept 1 within 1e-5, needle_recall 1).
# trace:     the same workload written as a .npy trace (--write-trace) and read back (--trace):
#            the same checks, needle_recall nan on every row, and every policy that does not
#            depend on the head table (all but duo and razor, whose table a trace estimates)
#            gives exactly the synthetic run's rel_error, mass_kept and kv_bytes — the trace path
#            feeds the harness the same tensors.
cmake_minimum_required(VERSION 3.20)

foreach(var HARNESS WORK_DIR MODE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "smoke_test.cmake: -D${var}=... is required")
  endif()
endforeach()

set(workload --tokens 512 --layers 2 --seed 3)
set(header "policy,compression,rel_error,mass_kept,needle_recall,kv_bytes")
set(policies full random streaming h2o tova snapkv pyramidkv knorm fastgen duo razor adakv quest)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run_harness csv)
  execute_process(COMMAND ${HARNESS} ${ARGN} --csv ${csv} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${HARNESS} ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()

# Reads a CSV, checks its header, row count, policies and full row; returns the rows as a list
# (semicolon-separated lines) in `result`.
function(check_csv csv expect_recall result)
  file(STRINGS ${csv} lines)
  list(LENGTH lines count)
  list(GET lines 0 first)
  if(NOT first STREQUAL header)
    message(FATAL_ERROR "${csv}: header is '${first}', expected '${header}'")
  endif()
  # 1 header + full + 12 policies (quest among them) x 4 compressions.
  if(NOT count EQUAL 50)
    message(FATAL_ERROR "${csv}: ${count} lines, expected 50")
  endif()
  foreach(policy ${policies})
    set(found FALSE)
    foreach(line ${lines})
      if(line MATCHES "^${policy},")
        set(found TRUE)
      endif()
    endforeach()
    if(NOT found)
      message(FATAL_ERROR "${csv}: no row for policy '${policy}'")
    endif()
  endforeach()
  list(GET lines 1 full_row)
  # mass_kept: a sum of fp32 probabilities, 1 to within 1e-5.
  if(NOT full_row MATCHES "^full,0,0,(1|0\\.99999[0-9]*|1\\.00000[0-9]*),${expect_recall},[0-9]+$")
    message(FATAL_ERROR "${csv}: full row is '${full_row}', expected "
                        "full,0,0,<1 within 1e-5>,${expect_recall},<bytes>")
  endif()
  list(REMOVE_AT lines 0)
  set(${result} "${lines}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "synthetic")
  run_harness(${WORK_DIR}/synthetic.csv ${workload})
  check_csv(${WORK_DIR}/synthetic.csv 1 rows)
elseif(MODE STREQUAL "trace")
  execute_process(COMMAND ${HARNESS} ${workload} --write-trace ${WORK_DIR}/trace
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "--write-trace failed (${rc}):\n${out}\n${err}")
  endif()
  foreach(tensor q k v)
    if(NOT EXISTS ${WORK_DIR}/trace/layer1_${tensor}.npy)
      message(FATAL_ERROR "--write-trace did not write layer1_${tensor}.npy")
    endif()
  endforeach()
  # --seed: the random policy's seed, as in the synthetic run.
  run_harness(${WORK_DIR}/trace.csv --trace ${WORK_DIR}/trace --probes 8 --seed 3)
  check_csv(${WORK_DIR}/trace.csv nan trace_rows)
  run_harness(${WORK_DIR}/synthetic.csv ${workload})
  check_csv(${WORK_DIR}/synthetic.csv 1 synthetic_rows)
  foreach(trace_row synthetic_row IN ZIP_LISTS trace_rows synthetic_rows)
    string(REPLACE "," ";" t "${trace_row}")
    string(REPLACE "," ";" s "${synthetic_row}")
    list(GET t 0 policy)
    list(GET t 4 recall)
    if(NOT recall STREQUAL "nan")
      message(FATAL_ERROR "trace row '${trace_row}': needle_recall must be nan")
    endif()
    if(policy STREQUAL "duo" OR policy STREQUAL "razor")
      continue()
    endif()
    foreach(column 0 1 2 3 5)
      list(GET t ${column} a)
      list(GET s ${column} b)
      if(NOT a STREQUAL b)
        message(FATAL_ERROR "trace row '${trace_row}' differs from the synthetic run's "
                            "'${synthetic_row}' (same tensors: it must not)")
      endif()
    endforeach()
  endforeach()
else()
  message(FATAL_ERROR "smoke_test.cmake: MODE is '${MODE}', expected synthetic or trace")
endif()
message("eviction harness smoke test (${MODE}): passed")
