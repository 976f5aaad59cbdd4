#!/bin/sh
# Prepare Mosquitto's password file and TLS certificate (POSIX sh; run by the
# broker-init service of deploy/compose with the eclipse-mosquitto image, and
# by tests/test_deploy.py on the host).
#
# Users: "pipeline" from $SECRETS_DIR/mqtt_pipeline_password (required) and
# "simulator" from $SECRETS_DIR/mqtt_simulator_password (created when that file
# is not empty, removed when it is). Other entries (sensors added with
# mosquitto_passwd) are kept.
#
# TLS: if $CERTS_DIR/server.crt does not exist, a private CA (ca.crt; its key
# is deleted) and a server certificate for $TLS_HOSTNAME are generated. For
# production, put your own server.crt/server.key there; they are never replaced.
set -eu

AUTH_DIR=${AUTH_DIR:-/mosquitto/auth}
CERTS_DIR=${CERTS_DIR:-/mosquitto/certs}
SECRETS_DIR=${SECRETS_DIR:-/run/secrets}
TLS_HOSTNAME=${TLS_HOSTNAME:-localhost}
# The eclipse-mosquitto image runs the broker as uid/gid 1883.
OWNER=${OWNER:-1883:1883}

passwd_file="$AUTH_DIR/passwd"
mkdir -p "$AUTH_DIR" "$CERTS_DIR"
umask 077

secret() {
    # The secret's content without a trailing newline; empty if missing.
    if [ -f "$SECRETS_DIR/$1" ]; then tr -d '\r\n' < "$SECRETS_DIR/$1"; fi
}

set_user() {
    if [ -f "$passwd_file" ]; then
        mosquitto_passwd -b "$passwd_file" "$1" "$2"
    else
        mosquitto_passwd -c -b "$passwd_file" "$1" "$2"
    fi
}

pipeline_pw=$(secret mqtt_pipeline_password)
if [ -z "$pipeline_pw" ]; then
    echo "broker-init: $SECRETS_DIR/mqtt_pipeline_password is missing or empty" >&2
    exit 1
fi
set_user pipeline "$pipeline_pw"

simulator_pw=$(secret mqtt_simulator_password)
if [ -n "$simulator_pw" ]; then
    set_user simulator "$simulator_pw"
elif grep -q '^simulator:' "$passwd_file"; then
    mosquitto_passwd -D "$passwd_file" simulator
fi

if [ ! -f "$CERTS_DIR/server.crt" ]; then
    if ! command -v openssl > /dev/null 2>&1; then
        apk add --no-cache openssl > /dev/null
    fi
    tmp=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=UrbanPulse private CA" \
        -keyout "$CERTS_DIR/ca.key" -out "$CERTS_DIR/ca.crt" 2> /dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$TLS_HOSTNAME" \
        -keyout "$CERTS_DIR/server.key" -out "$tmp/server.csr" 2> /dev/null
    printf 'subjectAltName=DNS:%s,DNS:mosquitto,DNS:localhost,IP:127.0.0.1\n' "$TLS_HOSTNAME" \
        > "$tmp/ext.cnf"
    openssl x509 -req -in "$tmp/server.csr" -CA "$CERTS_DIR/ca.crt" -CAkey "$CERTS_DIR/ca.key" \
        -CAcreateserial -days 825 -extfile "$tmp/ext.cnf" -out "$CERTS_DIR/server.crt" 2> /dev/null
    # The CA key is not kept next to the broker: to sign more, make a new CA.
    rm -rf "$tmp" "$CERTS_DIR/ca.srl" "$CERTS_DIR/ca.key"
    chmod 644 "$CERTS_DIR/ca.crt" "$CERTS_DIR/server.crt"
    echo "broker-init: generated a private CA and a server certificate for $TLS_HOSTNAME;" \
        "give sensors $CERTS_DIR/ca.crt"
fi

if [ "$(id -u)" = 0 ]; then
    chown "$OWNER" "$passwd_file" "$CERTS_DIR/server.key"
fi
chmod 600 "$passwd_file" "$CERTS_DIR/server.key"
echo "broker-init: password file has $(wc -l < "$passwd_file") user(s)"
