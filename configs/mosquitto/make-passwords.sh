#!/usr/bin/env bash
# Makes the Mosquitto password file for the users of configs/mosquitto/acl.
#
#   configs/mosquitto/make-passwords.sh [OUT_DIR]        (default OUT_DIR: var/mosquitto)
#
# Users: $DEVICEHUB_MQTT_USERS (space separated), else every `user` line of the acl file.
# Password of a user: $DEVICEHUB_MQTT_PASSWORD_<USER> (upper case, '-' -> '_'), e.g.
# DEVICEHUB_MQTT_PASSWORD_HUB_CLINIC_A_ROOM_1; else a random one is generated and written
# to OUT_DIR/credentials (mode 600, printed nowhere else). Never commit either file
# (var/ is ignored by git). Passwords never appear on a command line: mosquitto_passwd
# hashes a private plain-text file in place (-U).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-var/mosquitto}"
users="${DEVICEHUB_MQTT_USERS:-$(awk '$1 == "user" { print $2 }' "$here/acl")}"

if ! command -v mosquitto_passwd >/dev/null 2>&1; then
    echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2
    exit 1
fi

umask 077
mkdir -p "$out"
plain="$(mktemp "$out/.passwords.XXXXXX")"
creds="$(mktemp "$out/.credentials.XXXXXX")"
trap 'rm -f "$plain" "$creds"' EXIT

generated=0
for user in $users; do
    case "$user" in
        *:*|"") echo "bad user name: '$user'" >&2; exit 1 ;;
    esac
    var="DEVICEHUB_MQTT_PASSWORD_$(printf '%s' "$user" | tr 'a-z-' 'A-Z_')"
    pass="${!var:-}"
    if [ -z "$pass" ]; then
        pass="$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)"
        printf '%s:%s\n' "$user" "$pass" >> "$creds"
        generated=$((generated + 1))
    fi
    printf '%s:%s\n' "$user" "$pass" >> "$plain"
done

mosquitto_passwd -U "$plain"
mv "$plain" "$out/passwords"
# Mosquitto reads the file after dropping root privileges
chmod 0644 "$out/passwords"
if [ "$generated" -gt 0 ]; then
    mv "$creds" "$out/credentials"
    echo "generated $generated password(s): $out/credentials (mode 600)" >&2
fi
echo "password file: $out/passwords ($(printf '%s\n' $users | wc -l) users)" >&2
