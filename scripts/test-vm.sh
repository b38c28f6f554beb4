#!/usr/bin/env bash
# The kernel tests of the sensors and the agent's tracing, run again inside Debian's 6.1 kernel (QEMU/TCG): the
# same CO-RE objects, a kernel with kprobes/fentry/BPF-LSM. Part of `make test` when the VM can start.
#   APIARY_VM=0 skips it; APIARY_VM=required fails when the VM cannot start;
#   APIARY_VM_FULL=1 (what `make test-vm` sets) adds the pod-level tracing tests.
set -uo pipefail
cd "$(dirname "$0")/.."
host=$(uname -r)
if [ "${APIARY_VM:-auto}" = "0" ]; then
  echo "kernels tested: $host (native); 6.1 VM skipped (APIARY_VM=0)"
  exit 0
fi
if ! bash scripts/vm.sh --setup-only >/tmp/apiary-vm-setup.log 2>&1; then
  echo "kernels tested: $host (native); 6.1 VM not available: $(tail -1 /tmp/apiary-vm-setup.log)"
  [ "${APIARY_VM:-auto}" = "required" ] && exit 1
  exit 0
fi
tests=(tests/kernel/test_sensors_direct.py tests/kernel/test_tracing_features.py tests/kernel/test_loader.py
       tests/kernel/test_preflight.py tests/kernel/test_agent_kernels.py)
# the pod-level tracing tests (agent + endpoints) take ~10 more minutes under TCG: `make test-vm` runs them
[ "${APIARY_VM_FULL:-0}" = "1" ] && tests+=(tests/kernel/test_tracing.py)
bash scripts/vm.sh -- .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}"
rc=$?
if [ "$rc" = 255 ]; then
  echo "kernels tested: $host (native); the 6.1 VM did not boot"
  [ "${APIARY_VM:-auto}" = "required" ] && exit 1
  exit 0
fi
echo "kernels tested: $host (native) and 6.1 (VM): VM tests exit $rc"
exit "$rc"
