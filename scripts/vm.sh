#!/usr/bin/env bash
# Run a command as root inside one of Debian 12's kernels (QEMU/TCG via virtme-ng) on this machine's own
# filesystem, so the same build and venv are used. Output and exit code come back through --rwdir.
#   APIARY_VM_KERNEL=6.1|6.12 scripts/vm.sh [--setup-only] -- COMMAND...
# 6.1 (default): the kernel `linux-image-amd64` depends on; 6.12: the one `linux-image-6.12-amd64` depends on.
# Idempotent set-up from Debian packages only: qemu-system-x86, kmod, cpio (apt); virtme-ng (pip, own venv);
# the kernel package (apt-get download + dpkg -x into a cache; its modules copied to /lib/modules/<ver>).
# Inside, APIARY_TEST_KERNEL is vm61 or vm612; PYTHONPATH and PYTEST_ADDOPTS are passed through.
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
case "${APIARY_VM_KERNEL:-6.1}" in
  6.1) META=linux-image-amd64 TAG=vm61 ;;
  6.12) META=linux-image-6.12-amd64 TAG=vm612 ;;
  *) echo "APIARY_VM_KERNEL=${APIARY_VM_KERNEL}: not a kernel of the VM matrix (6.1 or 6.12)" >&2; exit 2 ;;
esac
depends() { apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}'; }
PKG=$(depends)
[ -n "$PKG" ] || { apt-get update -qq; PKG=$(depends); }
[ -n "$PKG" ] || { echo "no kernel package behind $META in the apt lists" >&2; exit 1; }
VER=${PKG#linux-image-}
KDIR="$CACHE/kernel-$VER"
if [ ! -f "$KDIR/boot/vmlinuz-$VER" ]; then
  rm -rf "$KDIR.tmp" && mkdir -p "$KDIR.tmp"
  (cd "$KDIR.tmp" && apt-get download -qq "$PKG" && dpkg -x ./*.deb tree) && rm -rf "$KDIR" && mv "$KDIR.tmp/tree" "$KDIR"
  rm -rf "$KDIR.tmp"
fi
if [ ! -d "/lib/modules/$VER" ]; then
  mkdir -p /lib/modules && cp -a "$KDIR/lib/modules/$VER" /lib/modules/
fi
[ "${1:-}" = "--setup-only" ] && { echo "vm ready: kernel $VER ($TAG)"; exit 0; }
[ "${1:-}" = "--" ] && shift
OUT=$(mktemp -d /tmp/apiary-vm-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for m in drivers/net/veth net/sched/sch_ingress net/sched/cls_bpf; do  # /var/cache is not visible inside
  ko="$KDIR/lib/modules/$VER/kernel/$m.ko"
  if [ -f "$ko" ]; then cp "$ko" "$OUT/"
  elif [ -f "$ko.xz" ]; then xz -dc "$ko.xz" > "$OUT/$(basename "$ko")"
  elif [ -f "$ko.zst" ]; then zstd -qdc "$ko.zst" > "$OUT/$(basename "$ko")"
  fi
done
pass=""
for v in PYTHONPATH PYTEST_ADDOPTS; do
  [ -n "${!v:-}" ] && pass+="export $v=$(printf '%q' "${!v}"); "
done
cat > "$OUT/run.sh" <<INNER
#!/bin/bash
cd $(pwd)
mount -t bpf bpf /sys/fs/bpf 2>/dev/null; mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mkdir -p /run/netns "$OUT/tmp" 2>/dev/null
# endpoints need veth, clsact and cls_bpf: modules in Debian's kernel that virtme's module dir lacks
for m in veth sch_ingress cls_bpf; do insmod "$OUT/\$m.ko" 2>/dev/null; done
export TMPDIR="$OUT/tmp" APIARY_TEST_KERNEL=$TAG
$pass
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
( $(printf '%q ' "$@") ) > "$OUT/stdout" 2> "$OUT/stderr"
echo \$? > "$OUT/rc"
INNER
chmod +x "$OUT/run.sh"
PATH="$CACHE/venv/bin:$PATH" timeout "${APIARY_VM_TIMEOUT:-1500}" vng --run "$KDIR/boot/vmlinuz-$VER" --disable-kvm --cpus 2 --memory 3G \
  --rwdir "$OUT" --append 'lsm=landlock,lockdown,yama,bpf' --exec "$OUT/run.sh" >/dev/null 2>&1 || true
cat "$OUT/stdout" 2>/dev/null || true
cat "$OUT/stderr" >&2 2>/dev/null || true
rc=$(cat "$OUT/rc" 2>/dev/null || echo 255)
echo "vm: kernel $VER exited $rc" >&2
exit "$rc"
