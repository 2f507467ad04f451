#!/usr/bin/env bash
# The Spark tests need a Java runtime (17+): install Debian's headless JRE when missing.
set -euo pipefail
if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "java 17+ is missing; install it (apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
echo ">> installing openjdk-17-jre-headless (Debian package, for the Spark engine tests)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq openjdk-17-jre-headless >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
java -version
