# deploy/install.cmake -- `make install` / `cmake --install BUILD --prefix P` (DESTDIR honoured),
# included at the end of the top CMakeLists.txt. What goes where (PREFIX = CMAKE_INSTALL_PREFIX,
# /usr/local by default):
#   PREFIX/bin/kiln                              the server
#   PREFIX/lib/systemd/system/kiln.service       the unit, ExecStart=PREFIX/bin/kiln serve
#                                                (systemd reads /usr/local/lib/systemd/system too)
#   PREFIX/lib/sysusers.d/kiln.conf              the system user kiln (systemd-sysusers)
#   PREFIX/share/kiln/kiln.env                   example settings: copy to /etc/kiln/kiln.env
#   PREFIX/share/kiln/nginx/kiln-gpus.conf       nginx: ports 8181-8184 -> X-TARGET-GPU 0-3
#   PREFIX/share/kiln/nginx/kiln-proxy.conf      nginx: one reverse proxy on port 80
#   PREFIX/share/doc/kiln/README.md              the documentation the unit points at
# Nothing is written to /etc or /var: the settings file is the administrator's (the unit
# reads /etc/kiln/kiln.env when it exists), and systemd creates /var/lib/kiln and /var/log/kiln.
# The unit is generated at install time, so that `--prefix` given to cmake --install (not only
# the configure-time CMAKE_INSTALL_PREFIX) is what ExecStart names; DESTDIR is a staging root
# and does not appear in it.

set(kiln_unit_gen ${CMAKE_BINARY_DIR}/deploy/kiln.service)
install(TARGETS kiln RUNTIME DESTINATION bin)
# runs at install time: \${CMAKE_INSTALL_PREFIX} is the prefix of that install
install(CODE "
  set(KILN_BIN \"\${CMAKE_INSTALL_PREFIX}/bin/kiln\")
  set(KILN_DOCDIR \"\${CMAKE_INSTALL_PREFIX}/share/doc/kiln\")
  configure_file(\"${CMAKE_SOURCE_DIR}/deploy/kiln.service\" \"${kiln_unit_gen}\" @ONLY)
")
install(FILES ${kiln_unit_gen} DESTINATION lib/systemd/system)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/kiln.sysusers DESTINATION lib/sysusers.d RENAME kiln.conf)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/kiln.env DESTINATION share/kiln)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/nginx/kiln-gpus.conf ${CMAKE_SOURCE_DIR}/deploy/nginx/kiln-proxy.conf
        DESTINATION share/kiln/nginx)
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION share/doc/kiln)
