# Generates a C++ source embedding every migrations/NNNN_*.sql file.
# Usage: cmake -DMIGRATIONS_DIR=... -DOUTPUT=... -P embed_migrations.cmake
file(GLOB files RELATIVE "${MIGRATIONS_DIR}" "${MIGRATIONS_DIR}/*.sql")
list(SORT files)
set(entries "")
foreach(f IN LISTS files)
  if(NOT f MATCHES "^([0-9][0-9][0-9][0-9])_[A-Za-z0-9_]+\\.sql$")
    message(FATAL_ERROR "migration file '${f}' must be named NNNN_name.sql")
  endif()
  math(EXPR version "${CMAKE_MATCH_1}")
  file(READ "${MIGRATIONS_DIR}/${f}" sql)
  string(APPEND entries "    {${version}, \"${f}\", R\"dmm_sql(${sql})dmm_sql\"},\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from migrations/*.sql by cmake/embed_migrations.cmake. Do not edit.
#include \"store/migrations.hpp\"

#include <array>

namespace dmm::detail {

static const EmbeddedMigration kMigrations[] = {
${entries}};

std::span<const EmbeddedMigration> embedded_migrations() { return kMigrations; }

}  // namespace dmm::detail
")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
