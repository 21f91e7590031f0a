# web/web.cmake -- kiln's web console (web/*.html|css|js|svg) compiled into kiln_api, so that
# `kiln serve` serves it at / with no file installed beside the binary. Included at the end of
# CMakeLists.txt. web/embed.cmake writes ${CMAKE_BINARY_DIR}/web_assets.c (one byte array per
# file and the table api__web_assets[] that src/api/routes_web.c looks names up in); the file is
# written again whenever a console file changes.
file(GLOB kiln_web_files CONFIGURE_DEPENDS
     ${CMAKE_SOURCE_DIR}/web/*.html ${CMAKE_SOURCE_DIR}/web/*.css
     ${CMAKE_SOURCE_DIR}/web/*.js ${CMAKE_SOURCE_DIR}/web/*.svg)
list(SORT kiln_web_files)
set(kiln_web_c ${CMAKE_BINARY_DIR}/web_assets.c)
add_custom_command(
  OUTPUT ${kiln_web_c}
  COMMAND ${CMAKE_COMMAND} -DOUT=${kiln_web_c} -DSRC=${CMAKE_SOURCE_DIR}/web -P ${CMAKE_SOURCE_DIR}/web/embed.cmake
  DEPENDS ${kiln_web_files} ${CMAKE_SOURCE_DIR}/web/embed.cmake
  COMMENT "Embedding the web console (${CMAKE_SOURCE_DIR}/web)"
  VERBATIM)
target_sources(kiln_api PRIVATE ${kiln_web_c})
