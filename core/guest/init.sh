#!/bin/busybox sh
# /init of microvm's default guest (runs from the initramfs as PID 1).
# It proves guest user space works: mount the pseudo file systems, print the marker
# line the tests wait for, and reboot at once. With "reboot=t" on the command line the
# kernel resets by triple fault, which ends the VM.
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "MICROVM-GUEST-OK"
/bin/busybox reboot -f
# Only reached if reboot failed: exiting PID 1 panics, and "panic=1" reboots.
exit 1
