#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system packages, then the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS=(clang llvm libbpf-dev bpftool iproute2 libelf-dev zlib1g-dev make iputils-ping linux-libc-dev)
# examples/seed/hello_ebpf.py: BCC for the system Python, and kernel headers for BCC to compile against
# (the running kernel's when Debian has them, else Debian's newest for this architecture)
kh=linux-headers-$(uname -r)
apt-cache show "$kh" >/dev/null 2>&1 || kh=linux-headers-$(dpkg --print-architecture)
APT_PKGS+=(python3-bpfcc "$kh")
# bench/services.py: kube-proxy's iptables and IPVS modes side by side with apiary's services, wrk for HTTP; gcc for its C connect client
APT_PKGS+=(iptables ipvsadm wrk gcc libc6-dev)
# bench/prefilter_drop.py: the XDP prefilter against iptables raw rules and an ipset of the same CIDRs
APT_PKGS+=(ipset)
# tests/kernel/test_prometheus_metrics.py, tests/unit/test_deploy_prometheus.py: promtool and a real Prometheus server
APT_PKGS+=(prometheus)
# L7 HTTP policy: the agent runs its own HAProxy (never the system service, stopped and disabled below)
APT_PKGS+=(haproxy)
# the DNS proxy bench: dnsperf (load generator) and dnsmasq-base (the resolver; no daemon, no service)
APT_PKGS+=(dnsperf dnsmasq-base)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" haproxy "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
fi
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 11)' 2>/dev/null; then PY=/usr/bin/python3; fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { apt-get install -y -qq python3-venv >/dev/null; "$PY" -m venv .venv; }
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # this machine's pip config names local mirrors that may be absent; those warnings are noise
  .venv/bin/pip install -q -e '.[dev]' 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
# bench/services.py draws its PNG chart with matplotlib (not a project dependency)
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q matplotlib 2> >(grep -v "^WARNING: Location" >&2)
