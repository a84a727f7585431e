#!/bin/sh
# Exploratory (issue 28): boot the Pi image's own kernel, initrd, device tree and cmdline.txt under qemu 10's
# raspi4b (TCG).  qemu 10 is not installed on the host: extract bookworm-backports' qemu-system-arm .deb to
# /tmp/pi/qemu10 (dpkg-deb -x).  The extra kernel parameters and the device-tree edit work around devices
# qemu's raspi4b does not model (see docs/image.md); usage: raspi4b-boot.sh IMAGE.raw SERIAL.log
set -eu
IMG=$1; LOG=$2
D=/tmp/pi/raspi4b; rm -rf $D; mkdir -p $D
export MTOOLS_SKIP_CHECK=1
OFF=$(sfdisk -J "$IMG" | python3 -c "import json,sys; t=json.load(sys.stdin)['partitiontable']; print(t['partitions'][1]['start']*t.get('sectorsize',512))")
for f in vmlinuz initrd bcm2711-rpi-4-b.dtb cmdline.txt; do mcopy -i "$IMG@@$OFF" ::$f $D/$f; done
cp --sparse=always "$IMG" $D/sd.raw && truncate -s 4G $D/sd.raw
dtc -q -I dtb -O dts $D/bcm2711-rpi-4-b.dtb | sed "/mmc@7e340000/,/};/{/vqmmc-supply\|vmmc-supply/d}" | dtc -q -I dts -O dtb -o $D/bcm2711-rpi-4-b.dtb -
exec timeout 1200 /tmp/pi/qemu10/usr/bin/qemu-system-aarch64 -M raspi4b -m 2G -kernel $D/vmlinuz -initrd $D/initrd \
  -dtb $D/bcm2711-rpi-4-b.dtb -append "$(sed "s/console=ttyS1,115200 //" $D/cmdline.txt) systemd.show_status=yes earlycon=pl011,mmio32,0xfe201000 loglevel=7 maxcpus=1 initcall_blacklist=brcmstb_l2_driver_init,brcmstb_i2c_driver_init clk_ignore_unused cryptomgr.notests" -audio none \
  -drive file=$D/sd.raw,if=sd,format=raw -display none -serial file:$LOG -monitor none -no-reboot
