#!/usr/bin/env bash
# Create a private CA, the broker's certificate, and one client certificate per name given.
# usage: deploy/pki/make-certs.sh OUT_DIR BROKER_HOSTNAME fedforge-server device-1 device-2 ...
set -euo pipefail
out=${1:?out dir}; host=${2:?broker host name}; shift 2
mkdir -p "$out"; cd "$out"
umask 077
[ -f ca.key ] || openssl req -x509 -newkey ed25519 -nodes -days 3650 -subj "/CN=fedforge-ca" -keyout ca.key -out ca.crt
issue() {  # name, subjectAltName
  openssl req -newkey ed25519 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile <(printf 'subjectAltName=%s\n' "$2") -out "$1.crt"
  rm -f "$1.csr"
}
issue broker "DNS:$host"
for name in "$@"; do issue "$name" "DNS:$name"; done
echo "written to $out: ca.crt, broker.{crt,key}, and a key pair per client"
