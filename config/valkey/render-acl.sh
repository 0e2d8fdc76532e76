#!/bin/sh
# Renders Valkey's ACL file from users.acl.tmpl (the init container of StatefulSet
# substrate-valkey; tests/tests/install.rs runs it against a real valkey-server).
#
# users.acl.tmpl names the users: `default` off (no connection is served without a
# password) and `substrate-apiserver`, whose password is the first line of the `password`
# key of Secret substrate-valkey-auth (created by the apiserver at its first start), stored
# as its SHA-256 only: the template's ${APISERVER_PASSWORD_SHA256}.
#
# Paths come from the environment (defaults: the pod's mounts):
#   SUBSTRATE_VALKEY_PASSWORD_FILE  (/etc/substrate-valkey-auth/password)
#   SUBSTRATE_VALKEY_ACL_TEMPLATE   (/etc/valkey/users.acl.tmpl)
#   SUBSTRATE_VALKEY_ACL_FILE       (/etc/valkey-acl/users.acl)
set -eu

password_file="${SUBSTRATE_VALKEY_PASSWORD_FILE:-/etc/substrate-valkey-auth/password}"
template="${SUBSTRATE_VALKEY_ACL_TEMPLATE:-/etc/valkey/users.acl.tmpl}"
acl_file="${SUBSTRATE_VALKEY_ACL_FILE:-/etc/valkey-acl/users.acl}"

password=""
if [ -r "$password_file" ]; then
  IFS= read -r password <"$password_file" || true
fi
if [ -z "$password" ]; then
  echo "render-acl: $password_file is missing or empty (Secret substrate-valkey-auth, key password)" >&2
  exit 1
fi
hash="$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)"
umask 077
tmp="$acl_file.tmp"
sed "s/\${APISERVER_PASSWORD_SHA256}/$hash/g" "$template" >"$tmp"
if grep -q '\${' "$tmp"; then
  echo "render-acl: $template has a placeholder other than \${APISERVER_PASSWORD_SHA256}" >&2
  rm -f "$tmp"
  exit 1
fi
mv "$tmp" "$acl_file"
echo "render-acl: wrote $acl_file from $template"
