#!/usr/bin/env bash
# Installs the real syslog receivers the interop tests run against:
#   - rsyslog with its OpenSSL TLS driver and RELP input (imrelp), from Debian's packages;
#   - syslog-ng, unpacked privately into target/test-receivers/syslog-ng, because Debian's
#     syslog-ng-core conflicts with rsyslog as a package (its library dependencies do not);
#   - for the fleet tests: HAProxy, Prometheus (with promtool), kubectl, and kubernetes-validate
#     (PyPI) in a private venv under target/test-receivers/venv; there too pycef,
#     ocsf-json-schema and jsonschema, which check the CEF and OCSF output.
# Prints the environment the tests read (KAR_RSYSLOGD, KAR_SYSLOG_NG, ...) as `export` lines.
# Needs root (or sudo) for apt-get. Never starts or reconfigures a system logger.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/target/test-receivers
log=$dest/install.log
mkdir -p "$dest"
: > "$log"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else echo "install-test-receivers: need root or sudo for: $*" >&2; return 1; fi
}

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-receivers: apt-get not found; install rsyslog (with rsyslog-openssl) and syslog-ng yourself" >&2
  exit 1
fi

need_update=1
apt_update() {
  if [ $need_update = 1 ]; then
    as_root apt-get update -q >>"$log" 2>&1
    need_update=0
  fi
}

# Clients the tests drive: curl (HTTP/1.1 and HTTP/2 refusals) and openssl (TLS 1.0/1.1 probes).
for tool in curl openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    apt_update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$tool" >>"$log" 2>&1 \
      || { echo "install-test-receivers: apt-get install $tool failed (see $log)" >&2; exit 1; }
  fi
done

# rsyslog + TLS driver + RELP (imrelp) (system packages; the tests run it with their own
# config and pid file).
if ! { [ -x /usr/sbin/rsyslogd ] && ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 \
       && ls /usr/lib/*/rsyslog/imrelp.so >/dev/null 2>&1; }; then
  apt_update
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends rsyslog rsyslog-openssl rsyslog-relp >>"$log" 2>&1 \
    || { echo "install-test-receivers: apt-get install rsyslog rsyslog-openssl rsyslog-relp failed (see $log)" >&2; exit 1; }
fi
# The fleet tests: HAProxy (three replicas behind it), Prometheus and promtool (alert rules,
# scraping), kubectl (`kubectl kustomize`); kubernetes-validate from PyPI in a private venv.
fleet=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || fleet+=(haproxy)
command -v promtool >/dev/null 2>&1 || fleet+=(prometheus)
command -v kubectl >/dev/null 2>&1 || fleet+=(kubernetes-client)
python3 -m venv --help >/dev/null 2>&1 || fleet+=(python3-venv)
if [ ${#fleet[@]} -gt 0 ]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${fleet[@]}" >>"$log" 2>&1 \
    || { echo "install-test-receivers: apt-get install ${fleet[*]} failed (see $log)" >&2; exit 1; }
fi
venv=$dest/venv
# kubernetes-validate (manifests), pycef (CEF), ocsf-json-schema + jsonschema (OCSF): the
# independent checkers of tests/deploy.rs and tests/formats.rs.
pip_pins=('kubernetes-validate==1.37.0' 'pycef==1.11' 'ocsf-json-schema==1.2.0' 'jsonschema==4.26.0')
if ! { [ -x "$venv/bin/kubernetes-validate" ] \
       && "$venv/bin/python" -c 'import pycef, ocsf_json_schema, jsonschema' >/dev/null 2>&1; }; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >>"$log" 2>&1 \
    || { echo "install-test-receivers: python3 -m venv failed (see $log)" >&2; exit 1; }
  "$venv/bin/pip" install -q "${pip_pins[@]}" >>"$log" 2>&1 \
    || { echo "install-test-receivers: pip install ${pip_pins[*]} failed (see $log)" >&2; exit 1; }
fi

# Installing rsyslog may start the system service on hosts with an init system; the tests
# never use it, and on containers without one nothing was started.

# syslog-ng, private copy.
sng=$dest/syslog-ng
if [ ! -x "$sng/usr/sbin/syslog-ng" ]; then
  apt_update
  rm -rf "$sng" "$dest/debs"
  mkdir -p "$sng" "$dest/debs"
  (cd "$dest/debs" && apt-get download syslog-ng-core >>"$log" 2>&1) \
    || { echo "install-test-receivers: apt-get download syslog-ng-core failed (see $log)" >&2; exit 1; }
  for deb in "$dest"/debs/*.deb; do dpkg-deb -x "$deb" "$sng"; done
  missing=()
  for deb in "$dest"/debs/*.deb; do
    deps=$(dpkg-deb -f "$deb" Depends 2>/dev/null || true)
    for p in $(echo "$deps" | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//' | tr -d ' '); do
      case "$p" in ""|syslog-ng*|sysvinit-utils|lsb-base) continue ;; esac
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
  done
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}" >>"$log" 2>&1 \
      || { echo "install-test-receivers: could not install ${missing[*]} (see $log)" >&2; exit 1; }
  fi
fi
modpath=$(ls -d "$sng"/usr/lib/syslog-ng/[0-9]* 2>/dev/null | sort -V | tail -1)

echo "export KAR_RSYSLOGD=/usr/sbin/rsyslogd"
echo "export KAR_HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)"
echo "export KAR_PROMETHEUS=$(command -v prometheus || echo /usr/bin/prometheus)"
echo "export KAR_PROMTOOL=$(command -v promtool || echo /usr/bin/promtool)"
echo "export KAR_KUBECTL=$(command -v kubectl || echo /usr/bin/kubectl)"
echo "export KAR_KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate"
echo "export KAR_CHECK_PYTHON=$venv/bin/python"
echo "export KAR_SYSLOG_NG=$sng/usr/sbin/syslog-ng"
echo "export KAR_SYSLOG_NG_MODULE_PATH=$modpath"
echo "export KAR_SYSLOG_NG_LIB_PATH=$sng/usr/lib/syslog-ng"
