/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI between Palisade's tc programs (datapath.c) and user space
 * (pkg/datapath): map keys and values, event records and the numbers they
 * carry. pkg/datapath mirrors every constant here; its tests fail when the
 * two disagree. Change both together, and remember that pinned maps outlive
 * an agent upgrade: a changed key or value layout needs new map names.
 */
#ifndef PALISADE_DATAPATH_H
#define PALISADE_DATAPATH_H

/*
 * Packet mark bits written by the programs (skb->mark), beside the node
 * proxy's socket mark:
 *
 *   bits  0-11  0x00000fff  node proxy SO_MARK 0x539 (mask 0xfff); read,
 *                           never written
 *   bit  12     0x00001000  PAL_MARK_SRC_ENROLLED: source is an enrolled
 *                           endpoint
 *   bit  13     0x00002000  PAL_MARK_DST_ENROLLED: destination is an
 *                           enrolled endpoint
 *   bits 14-15  0x0000c000  kube-proxy / kubelet (masquerade 0x4000,
 *                           drop 0x8000); never touched
 *   bits 16-31  0xffff0000  left to others (Calico's default mask, Cilium
 *                           identities); never touched
 *
 * The programs set or clear exactly the bits of PAL_MARK_MASK on every IP
 * packet they let through, so a stale value never survives them.
 */
#define PAL_MARK_SRC_ENROLLED 0x1000
#define PAL_MARK_DST_ENROLLED 0x2000
#define PAL_MARK_MASK (PAL_MARK_SRC_ENROLLED | PAL_MARK_DST_ENROLLED)

/* pal_endpoint.mode */
#define PAL_MODE_PERMISSIVE 0
#define PAL_MODE_STRICT 1

/* Which program saw the packet. */
#define PAL_DIR_FROM_POD 0 /* sent by the pod (host-side veth ingress) */
#define PAL_DIR_TO_POD 1   /* delivered to the pod (host-side veth egress) */

/* pal_counter_key.verdict */
#define PAL_VERDICT_PASS 0  /* let through: not guarded, or allowed plaintext */
#define PAL_VERDICT_HBONE 1 /* let through: TCP to or from the HBONE port */
#define PAL_VERDICT_PROXY 2 /* would be dropped, but carries the proxy mark */
#define PAL_VERDICT_DROP 3  /* dropped (TC_ACT_SHOT) */

/* pal_counter_key.reason and pal_event.reason */
#define PAL_REASON_NONE 0
#define PAL_REASON_PLAINTEXT 1 /* TCP between two enrolled endpoints, not HBONE */
#define PAL_REASON_STRICT 2    /* plaintext TCP connection attempt into a strict endpoint */
#define PAL_REASON_MALFORMED 3 /* IP header truncated or invalid */
#define PAL_REASON_TRUNCATED 4 /* guarded packet whose TCP or IPv6 extension header is cut short */
#define PAL_REASON_UNPARSED 5  /* guarded IPv6 packet whose extension headers are not followed */
#define PAL_REASON_FRAGMENT 6  /* non-first fragment of TCP between two enrolled endpoints */

/* Slots of pal_stats. */
#define PAL_STAT_EVENTS_LOST 0   /* drop events not written: ring buffer full */
#define PAL_STAT_COUNTERS_FULL 1 /* packets not counted: pal_counters full */
#define PAL_STAT_MAX 2

/*
 * An IP address as a key of pal_endpoints: IPv6 as is, IPv4 as an
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d), network byte order.
 */
struct pal_addr {
	__u32 w[4];
};

/* Value of pal_endpoints: one per address of every enrolled pod. */
struct pal_endpoint {
	/* Index of the workload (pod) in user space's table; every address of
	 * a pod has the same index. 0 is reserved for "not enrolled". */
	__u32 index;
	__u8 mode; /* PAL_MODE_* */
	__u8 flags; /* reserved, 0 */
	__u16 reserved;
};

/* Key of pal_counters (per-CPU hash). */
struct pal_counter_key {
	__u32 index;    /* the pod's endpoint index; 0: its address is not in pal_endpoints */
	__u8 direction; /* PAL_DIR_* */
	__u8 verdict;   /* PAL_VERDICT_* */
	__u8 reason;    /* PAL_REASON_*, for PAL_VERDICT_DROP; else 0 */
	__u8 reserved;
};

/* Value of pal_counters, per CPU. */
struct pal_counter {
	__u64 packets; /* segments: a GSO packet counts gso_segs */
	__u64 bytes;   /* skb->len, Ethernet header included */
};

/* A dropped packet, as written to the pal_events ring buffer. */
struct pal_event {
	__u64 timestamp; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	struct pal_addr saddr;
	struct pal_addr daddr;
	__u32 src_index; /* 0: source not enrolled */
	__u32 dst_index; /* 0: destination not enrolled */
	__u32 ifindex;
	__u32 len;  /* skb->len */
	__u32 mark; /* skb->mark as seen */
	__u16 sport; /* host byte order; 0 when unknown or not TCP */
	__u16 dport;
	__u8 family;    /* 4 or 6 */
	__u8 protocol;  /* IP protocol / IPv6 next header as far as parsed */
	__u8 reason;    /* PAL_REASON_* */
	__u8 direction; /* PAL_DIR_* */
	__u8 tcp_flags; /* TCP flags byte when a TCP header was read */
	__u8 reserved[3];
};

#endif /* PALISADE_DATAPATH_H */
