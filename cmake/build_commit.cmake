# Run at every build (cmake -P): writes the checkout's commit into OUTPUT, touching the file only when
# the text changes, so an unchanged commit recompiles and relinks nothing. A build outside a git
# checkout says "unknown"; uncommitted changes to tracked files add "-dirty".
execute_process(COMMAND git rev-parse HEAD WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE MOELAB_BUILD_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE not_git ERROR_QUIET)
if(not_git OR MOELAB_BUILD_COMMIT STREQUAL "")
  set(MOELAB_BUILD_COMMIT "unknown")
else()
  execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY "${SOURCE_DIR}"
                  OUTPUT_VARIABLE changes ERROR_QUIET)
  if(NOT changes STREQUAL "")
    string(APPEND MOELAB_BUILD_COMMIT "-dirty")
  endif()
endif()
configure_file("${SOURCE_DIR}/src/util/build_commit.cpp.in" "${OUTPUT}" @ONLY)
