#!/usr/bin/env bash
# The kernel tests of the sensors, the agent's tracing and L7 through HAProxy, run again inside Debian 12's
# 6.1 and 6.12 kernels (QEMU/TCG): the same CO-RE objects, kernels with kprobes/fentry/BPF-LSM. Part of
# `make test` when the VM can start. Prints which kernels ran and how long each took.
#   APIARY_VM=0 skips it; APIARY_VM=required fails when a VM cannot start;
#   APIARY_VM_KERNELS="6.1 6.12" (the default; `make test` sets 6.1 alone, to stay within CI's time) picks the kernels;
#   APIARY_VM_FULL=1 (what `make test-vm` sets) adds the pod-level tracing tests.
set -uo pipefail
cd "$(dirname "$0")/.."
host=$(uname -r)
kernels=${APIARY_VM_KERNELS:-6.1 6.12}
if [ "${APIARY_VM:-auto}" = "0" ]; then
  echo "kernels tested: $host (native); VM kernels ($kernels) skipped (APIARY_VM=0)"
  exit 0
fi
tests=(tests/kernel/test_sensors_direct.py tests/kernel/test_tracing_features.py tests/kernel/test_loader.py
       tests/kernel/test_preflight.py tests/kernel/test_agent_kernels.py tests/kernel/test_differential.py)
# L7 through HAProxy (bpf_sk_assign to its listener, which kernels before 6.5 refuse for a SO_REUSEPORT
# socket: Debian 12's own kernel) with a network agent and endpoints: ~6 minutes under TCG
tests+=("tests/kernel/test_l7_http.py::test_seed_policy_judges_each_request")
# the pod-level tracing tests (agent + endpoints) take ~10 more minutes per kernel under TCG, the DNS proxy's
# ~6, L7 for clients on other hosts (from_netdev, NodePort) ~7: `make test-vm`
[ "${APIARY_VM_FULL:-0}" = "1" ] && tests+=(tests/kernel/test_tracing.py
  "tests/kernel/test_l7_dns.py::test_allowed_name_resolves_and_its_ip_becomes_reachable"
  "tests/kernel/test_l7_dns.py::test_disallowed_name_is_refused_and_wildcards_match_one_label"
  tests/kernel/test_l7_outside_client.py)
summary=("$host (native)")
status=0
for k in $kernels; do
  if ! APIARY_VM_KERNEL=$k bash scripts/vm.sh --setup-only >/tmp/apiary-vm-setup.log 2>&1; then
    summary+=("$k VM not available: $(tail -1 /tmp/apiary-vm-setup.log)")
    [ "${APIARY_VM:-auto}" = "required" ] && status=1
    continue
  fi
  start=$(date +%s)
  # a test still running after 300 s has every thread's stack written to stderr (shown even when the VM's time
  # runs out), so a stall says where it is
  APIARY_VM_KERNEL=$k bash scripts/vm.sh -- .venv/bin/python -m pytest -q -p no:cacheprovider \
    -o faulthandler_timeout=300 "${tests[@]}"
  rc=$?
  took=$(( $(date +%s) - start ))
  if [ "$rc" = 255 ]; then
    summary+=("$k VM gave no result in ${took}s (did not boot, or APIARY_VM_TIMEOUT ran out)")
    [ "${APIARY_VM:-auto}" = "required" ] && status=1
    continue
  fi
  summary+=("$k (VM): exit $rc in $((took / 60))m$((took % 60))s")
  [ "$rc" = 0 ] || status=$rc
done
printf 'kernels tested: %s\n' "${summary[0]}"
for line in "${summary[@]:1}"; do printf '  %s\n' "$line"; done
exit "$status"
