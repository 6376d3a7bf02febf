#!/bin/busybox sh
# PID 1 of a kernel-matrix guest (tools/kernels/matrix.py builds the initramfs around it).
# The host's / arrives read-only over virtiofs (tag "host") and becomes the guest's root
# under a tmpfs overlay; the row's output directory arrives writable (tag "out"). The
# kernel's modules, extracted on the host, are bound on /lib/modules. Then run.sh in the
# output directory runs, its exit code goes to out/exit-code, and the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
OUT=$(arg kmatrix.out)
MODDIR=$(arg kmatrix.modules)
fail() { echo "kmatrix init: $*"; poweroff -f; }

for m in $(cat /boot-modules); do insmod "/modules/$m" || fail "insmod $m"; done
mkdir -p /host /rw /newroot
mount -t virtiofs -o ro host /host || fail "no virtiofs share 'host'"
mount -t tmpfs -o size=75% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "overlay over the host root"
mkdir -p "/newroot$OUT" /newroot/lib/modules /newroot/tmp /newroot/run
mount -t virtiofs out "/newroot$OUT" || fail "no virtiofs share 'out'"
mount --bind "/host$MODDIR" /newroot/lib/modules || fail "no modules at $MODDIR"
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
# the kernel asks /sbin/modprobe for modules (`ip link add ... type geneve`); the host has none
cp /bin/busybox /newroot/busybox-guest
ln -sf /busybox-guest /newroot/sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /busybox-guest sh -c "
  /busybox-guest mount -t bpf bpf /sys/fs/bpf
  /busybox-guest mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
  /busybox-guest mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
  /busybox-guest ip link set lo up
  cd $OUT && /busybox-guest sh ./run.sh > guest.log 2>&1
  echo \$? > exit-code
  /busybox-guest sync
  /busybox-guest poweroff -f"
