// SPDX-License-Identifier: GPL-2.0
/*
 * kvmdelay: widen a race window in the kernel under test (L1) on purpose.
 *
 * Up to KVMDELAY_MAX probes, each a kprobe on func+offset (or a kretprobe on func's return, ret=1) whose
 * handler busy-waits us microseconds with probability ppm/1e6.  A busy wait, not a sleep: a kprobe handler
 * runs with preemption (int3 probes: interrupts) off, and the point is to hold the CPU inside the window, e.g.
 * after a fault has looked up its pfn and before it takes mmu_lock, while reclaim runs on another CPU.
 *
 *   insmod kvmdelay.ko func=__kvm_faultin_pfn,kvm_tdp_mmu_age_gfn_range offset=0,0 ret=1,0 us=200,50 \
 *          ppm=500000,1000000
 *
 * Arrays are positional; offset and ret may be shorter than func (missing entries: 0).  us is capped at
 * KVMDELAY_MAX_US so a typo cannot wedge L1.  /sys/module/kvmdelay/parameters/{seen,fired} count, per probe,
 * the handler's calls and the delays it applied (read them at the end of a run).
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/kprobes.h>
#include <linux/delay.h>
#include <linux/random.h>
#include <linux/atomic.h>

#define KVMDELAY_MAX 8
#define KVMDELAY_MAX_US 20000

static char *func[KVMDELAY_MAX];
static unsigned int offset[KVMDELAY_MAX];
static bool ret[KVMDELAY_MAX];
static unsigned int us[KVMDELAY_MAX];
static unsigned int ppm[KVMDELAY_MAX];
static unsigned long seen[KVMDELAY_MAX];
static unsigned long fired[KVMDELAY_MAX];
static int nfunc, noffset, nret, nus, nppm, nseen = KVMDELAY_MAX, nfired = KVMDELAY_MAX;

module_param_array(func, charp, &nfunc, 0444);
MODULE_PARM_DESC(func, "functions to probe (kallsyms names)");
module_param_array(offset, uint, &noffset, 0444);
MODULE_PARM_DESC(offset, "byte offset into each function (kprobe only; 0: entry)");
module_param_array(ret, bool, &nret, 0444);
MODULE_PARM_DESC(ret, "1: delay when the function returns (kretprobe) instead of at func+offset");
module_param_array(us, uint, &nus, 0444);
MODULE_PARM_DESC(us, "busy-wait per hit, microseconds");
module_param_array(ppm, uint, &nppm, 0444);
MODULE_PARM_DESC(ppm, "probability of a delay per hit, parts per million");
module_param_array(seen, ulong, &nseen, 0444);
MODULE_PARM_DESC(seen, "per probe: handler calls (read-only)");
module_param_array(fired, ulong, &nfired, 0444);
MODULE_PARM_DESC(fired, "per probe: delays applied (read-only)");

struct delay_probe {
	int idx;
	bool is_ret;
	bool registered;
	struct kprobe kp;
	struct kretprobe rp;
};

static struct delay_probe probes[KVMDELAY_MAX];

static void delay_hit(int i)
{
	unsigned int left = us[i];

	/* plain increments: a lost count under a race is harmless, an atomic here would perturb the window */
	WRITE_ONCE(seen[i], READ_ONCE(seen[i]) + 1);
	if (ppm[i] < 1000000 && get_random_u32_below(1000000) >= ppm[i])
		return;
	WRITE_ONCE(fired[i], READ_ONCE(fired[i]) + 1);
	while (left) {		/* udelay() wants small arguments */
		unsigned int step = min(left, 1000U);

		udelay(step);
		left -= step;
	}
}

static int kp_pre(struct kprobe *p, struct pt_regs *regs)
{
	delay_hit(container_of(p, struct delay_probe, kp)->idx);
	return 0;
}

static int rp_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	delay_hit(container_of(get_kretprobe(ri), struct delay_probe, rp)->idx);
	return 0;
}

static void unregister_all(void)
{
	int i;

	for (i = 0; i < nfunc; i++) {
		if (!probes[i].registered)
			continue;
		if (probes[i].is_ret)
			unregister_kretprobe(&probes[i].rp);
		else
			unregister_kprobe(&probes[i].kp);
		probes[i].registered = false;
	}
}

static int check_params(void)
{
	if (nfunc < 1) {
		pr_err("kvmdelay: no func given\n");
		return -EINVAL;
	}
	if (nus != nfunc || nppm != nfunc || noffset > nfunc || nret > nfunc) {
		pr_err("kvmdelay: %d func but %d us, %d ppm, %d offset, %d ret\n", nfunc, nus, nppm, noffset, nret);
		return -EINVAL;
	}
	return 0;
}

static int register_one(int i)
{
	struct delay_probe *d = &probes[i];
	int err;

	if (us[i] > KVMDELAY_MAX_US || ppm[i] > 1000000 || (ret[i] && offset[i])) {
		pr_err("kvmdelay: probe %d (%s): us %u (max %u), ppm %u (max 1000000), ret with offset %u\n",
		       i, func[i], us[i], KVMDELAY_MAX_US, ppm[i], offset[i]);
		return -EINVAL;
	}
	d->idx = i;
	d->is_ret = ret[i];
	if (d->is_ret) {
		d->rp.kp.symbol_name = func[i];
		d->rp.handler = rp_ret;
		d->rp.maxactive = 64;
		err = register_kretprobe(&d->rp);
	} else {
		d->kp.symbol_name = func[i];
		d->kp.offset = offset[i];
		d->kp.pre_handler = kp_pre;
		err = register_kprobe(&d->kp);
	}
	if (err) {
		pr_err("kvmdelay: cannot probe %s+%#x%s: %d\n", func[i], offset[i], ret[i] ? " (return)" : "", err);
		return err;
	}
	d->registered = true;
	pr_info("kvmdelay: %s+%#x%s at %px: %u us, %u ppm\n", func[i], offset[i], ret[i] ? " (return)" : "",
		d->is_ret ? (void *)d->rp.kp.addr : (void *)d->kp.addr, us[i], ppm[i]);
	return 0;
}

static int __init kvmdelay_init(void)
{
	int i, err = check_params();

	for (i = 0; !err && i < nfunc; i++)
		err = register_one(i);
	if (err)
		unregister_all();
	return err;
}

static void __exit kvmdelay_exit(void)
{
	unregister_all();
}

module_init(kvmdelay_init);
module_exit(kvmdelay_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kvm-dirty-harness: busy-wait delays on kprobes to widen race windows");
