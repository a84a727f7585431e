// SPDX-License-Identifier: GPL-2.0-only
/*
 * `reboot "0 tryboot"` on a Raspberry Pi 4 or 5 sets the firmware's one-shot tryboot flag, so that its next
 * start boots autoboot.txt's [tryboot] partition once (docs/updates.md).
 *
 * Raspberry Pi's own kernel does this in its firmware driver; Debian's, the upstream one, does not.  Without
 * this module the reboot that should start a trial starts the default again and an update is never tried.
 * The flag is the firmware's mailbox property SET_REBOOT_FLAGS, bit 0 (Raspberry Pi's mailbox property
 * interface).  The restart's argument is "<partition> <flags>": `systemctl reboot
 * --reboot-argument="0 tryboot"`, as appliance/update/tryboot.py restarts into a trial.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/of.h>
#include <linux/reboot.h>
#include <linux/string.h>
#include <soc/bcm2835/raspberrypi-firmware.h>

#define SET_REBOOT_FLAGS 0x00038064
#define TRYBOOT BIT(0)

static struct device_node *firmware_node;

static int paladin_tryboot_restart(struct notifier_block *nb, unsigned long action, void *data)
{
	const char *argument = data;
	struct rpi_firmware *firmware;
	u32 flags = TRYBOOT;
	int err;

	if (action != SYS_RESTART || !argument || !strstr(argument, " tryboot"))
		return NOTIFY_DONE;
	/* Taken only now: the firmware's driver may have come after this module. */
	firmware = rpi_firmware_get(firmware_node);
	if (!firmware) {
		pr_err("the firmware's driver is not there: this restart is no trial\n");
		return NOTIFY_DONE;
	}
	err = rpi_firmware_property(firmware, SET_REBOOT_FLAGS, &flags, sizeof(flags));
	rpi_firmware_put(firmware);
	if (err)
		pr_err("the firmware refused the tryboot flag (%d): this restart is no trial\n", err);
	else
		pr_info("tryboot flag set: the firmware starts autoboot.txt's [tryboot] partition once\n");
	return NOTIFY_DONE;
}

static struct notifier_block paladin_tryboot_notifier = {
	.notifier_call = paladin_tryboot_restart,
};

static int __init paladin_tryboot_init(void)
{
	int err;

	firmware_node = of_find_compatible_node(NULL, NULL, "raspberrypi,bcm2835-firmware");
	if (!firmware_node)
		return -ENODEV;
	err = register_reboot_notifier(&paladin_tryboot_notifier);
	if (err) {
		of_node_put(firmware_node);
		return err;
	}
	pr_info("reboot \"0 tryboot\" sets the firmware's tryboot flag\n");
	return 0;
}

static void __exit paladin_tryboot_exit(void)
{
	unregister_reboot_notifier(&paladin_tryboot_notifier);
	of_node_put(firmware_node);
}

module_init(paladin_tryboot_init);
module_exit(paladin_tryboot_exit);
MODULE_DESCRIPTION("PAL-adin OS: pass reboot \"0 tryboot\" to the Raspberry Pi firmware");
MODULE_LICENSE("GPL");
