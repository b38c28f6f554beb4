#!/usr/bin/env bash
# Run a command as root inside Debian's 6.1 kernel (QEMU/TCG via virtme-ng) on this machine's own
# filesystem, so the same build and venv are used. Output and exit code come back through --rwdir.
#   scripts/vm.sh [--setup-only] -- COMMAND...
# Idempotent set-up: qemu-system-x86, kmod, cpio (apt); virtme-ng (pip, own venv); the kernel package
# (apt-get download + dpkg -x into a cache; its modules copied to /lib/modules/<ver>).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${APIARY_VM_CACHE:-/var/cache/apiary-vm}
mkdir -p "$CACHE"
need=()
for p in qemu-system-x86 kmod cpio busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x "$CACHE/venv/bin/vng" ]; then
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q virtme-ng 2> >(grep -v "^WARNING: Location" >&2)
fi
PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}')
[ -n "$PKG" ] || { apt-get update -qq; PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}'); }
VER=${PKG#linux-image-}
if [ ! -f "$CACHE/kernel/boot/vmlinuz-$VER" ]; then
  (cd "$CACHE" && rm -f linux-image-*.deb && apt-get download -qq "$PKG" && dpkg -x linux-image-*.deb kernel)
fi
if [ ! -d "/lib/modules/$VER" ]; then
  cp -a "$CACHE/kernel/lib/modules/$VER" /lib/modules/
fi
[ "${1:-}" = "--setup-only" ] && { echo "vm ready: kernel $VER"; exit 0; }
[ "${1:-}" = "--" ] && shift
OUT=$(mktemp -d /tmp/apiary-vm-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for m in drivers/net/veth net/sched/sch_ingress net/sched/cls_bpf; do  # /var/cache is not visible inside
  cp "$CACHE/kernel/lib/modules/$VER/kernel/$m.ko" "$OUT/" 2>/dev/null || true
done
cat > "$OUT/run.sh" <<INNER
#!/bin/bash
cd $(pwd)
mount -t bpf bpf /sys/fs/bpf 2>/dev/null; mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mkdir -p /run/netns "$OUT/tmp" 2>/dev/null
# endpoints need veth, clsact and cls_bpf: modules in Debian's kernel that virtme's module dir lacks
for m in veth sch_ingress cls_bpf; do insmod "$OUT/\$m.ko" 2>/dev/null; done
export TMPDIR="$OUT/tmp" APIARY_TEST_KERNEL=vm61
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
( $(printf '%q ' "$@") ) > "$OUT/stdout" 2> "$OUT/stderr"
echo \$? > "$OUT/rc"
INNER
chmod +x "$OUT/run.sh"
PATH="$CACHE/venv/bin:$PATH" timeout 1500 vng --run "$CACHE/kernel/boot/vmlinuz-$VER" --disable-kvm --cpus 2 --memory 3G \
  --rwdir "$OUT" --append 'lsm=landlock,lockdown,yama,bpf' --exec "$OUT/run.sh" >/dev/null 2>&1 || true
cat "$OUT/stdout" 2>/dev/null || true
cat "$OUT/stderr" >&2 2>/dev/null || true
rc=$(cat "$OUT/rc" 2>/dev/null || echo 255)
echo "vm: kernel $VER exited $rc" >&2
exit "$rc"
