#!/usr/bin/env bash
# Create a private CA, the broker's certificate, and one client certificate per name given.
# usage: deploy/pki/make-certs.sh OUT_DIR BROKER_NAMES fedforge-server device-1 device-2 ...
#   BROKER_NAMES: the broker's host names and/or IP addresses, comma-separated, e.g.
#   "mqtt.example.com,10.0.0.5": clients check the host of their broker_url against them.
# A client's name becomes its certificate's CN, which the broker uses as the MQTT user name
# (use_identity_as_username) in fedforge.acl: a device id, or fedforge-server for the cloud.
# Ed25519 keys: verified with Mosquitto 2.0.11 on OpenSSL 3.0 (Debian 12) and Python's ssl.
# Keys are written 0600, certificates 0644; re-running keeps the CA and reissues the rest.
set -euo pipefail
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }
out=${1:?out dir}; names=${2:?broker host names/IPs, comma-separated}; shift 2
san=""
IFS=',' read -ra hosts <<<"$names"
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="${san:+,}IP:$h"; else san+="${san:+,}DNS:$h"; fi
done
mkdir -p "$out"; cd "$out"
umask 077
[ -f ca.key ] || openssl req -x509 -newkey ed25519 -nodes -days 3650 -subj "/CN=fedforge-ca" -keyout ca.key -out ca.crt
issue() {  # name, subjectAltName
  openssl req -newkey ed25519 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile <(printf 'subjectAltName=%s\n' "$2") -out "$1.crt"
  rm -f "$1.csr"
  chmod 0644 "$1.crt"
}
chmod 0644 ca.crt
issue broker "$san"
for name in "$@"; do issue "$name" "DNS:$name"; done
echo "written to $out: ca.crt, broker.{crt,key} ($san), and a key pair per client"
