// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Palisade's kernel datapath: mark, guard and count the traffic of enrolled
 * pods. Compiled by bpf2go into pkg/datapath, which loads and attaches it.
 *
 * Attachment. Two tc (SCHED_CLS) programs per enrolled pod, on the
 * host-side end of the pod's veth pair, in the node's network namespace:
 *
 *   pal_from_pod  tc ingress of the host-side veth: packets the pod sends
 *   pal_to_pod    tc egress of the host-side veth: packets for the pod
 *
 * The host side is out of the pod's reach (a pod with CAP_NET_ADMIN can
 * flush its own redirect rules, and could detach programs on its own
 * interface), and marks written there are seen by the node's routing and
 * iptables. The programs only depend on the addresses in the packet, not on
 * the interface, so they work unchanged on the pod-side interface
 * (pal_from_pod on its egress, pal_to_pod on its ingress) where marks would
 * reach the pod's own rules instead.
 *
 * One pass per packet does three things:
 *
 *   mark   set PAL_MARK_SRC_ENROLLED / PAL_MARK_DST_ENROLLED (datapath.h)
 *          on every IP packet let through;
 *   guard  drop what must not flow (below);
 *   count  per-endpoint, per-direction, per-verdict (and drop reason)
 *          packets and bytes in pal_counters, and one pal_event per drop
 *          on the pal_events ring buffer.
 *
 * Guard rules, from the map pal_endpoints of every enrolled address in the
 * cluster (local and remote pods):
 *
 *   1. A packet carrying the node proxy's mark (mark & mask == 0x539/0xfff)
 *      is never dropped. The mark is cleared when a packet crosses network
 *      namespaces, so on the host-side veth only traffic generated in the
 *      node's namespace can carry it, and a pod cannot forge it.
 *   2. TCP between two enrolled endpoints must be HBONE: to the HBONE port
 *      (15008), or from it without being a connection attempt (SYN without
 *      ACK: an app binding source port 15008 cannot open a plaintext
 *      connection). TCP port 53 (DNS) is allowed on the same terms.
 *      Everything else is dropped (PAL_REASON_PLAINTEXT).
 *   3. A TCP connection attempt (SYN without ACK) into a strict endpoint
 *      from a source that is not enrolled is dropped (PAL_REASON_STRICT),
 *      unless it goes to the HBONE port or port 53, or comes from the
 *      kubelet probe source (169.254.7.127 / fd16:9254:7127:1337:ffff:
 *      ffff:ffff:ffff, as in the redirect rules). The guard is stateless:
 *      other segments (replies to the pod's own connections) pass; without
 *      the SYN no inbound connection can be established.
 *   4. Everything else passes: UDP (DNS included), ICMP, ICMPv6, other IP
 *      protocols, non-IP frames (ARP), traffic with at most one enrolled
 *      side into a permissive endpoint.
 *
 * Parsing. Headers are copied out of the packet, directly from the linear
 * area when they are in it and with bpf_skb_load_bytes (which also reads
 * paged data) otherwise; neither reads past the end, and "truncated" means
 * the packet is really that short, not that its headers are paged.
 * The link layer must be Ethernet (veth).
 *
 *   - IPv4: version 4 and IHL >= 5, else the packet is dropped
 *     (PAL_REASON_MALFORMED; the IP stack would drop it too). Options
 *     (IHL > 5) are skipped. The total length field is not checked
 *     (BIG TCP sends 0).
 *   - IPv6: version 6, else PAL_REASON_MALFORMED. Up to PAL_MAX_EXTHDRS
 *     extension headers are followed: hop-by-hop, routing, destination
 *     options, fragment and AH. A longer chain, or one cut short, cannot
 *     be classified: a guarded packet (enrolled on both sides, or into a
 *     strict endpoint) is dropped (fail closed: PAL_REASON_UNPARSED,
 *     PAL_REASON_TRUNCATED), any other passes. No next header (59) passes.
 *   - Fragments: a first fragment is judged on its L4 header like any
 *     packet; when the TCP header is not complete in it, a guarded one is
 *     dropped (PAL_REASON_TRUNCATED). Non-first fragments carry no L4
 *     header: between two enrolled endpoints, those of TCP (or of an IPv6
 *     extension header) are dropped (PAL_REASON_FRAGMENT: HBONE never
 *     fragments, as Linux TCP sets DF and IPv6 routers do not fragment);
 *     all others pass, as they cannot be delivered without their first
 *     fragment, which was judged (Linux discards overlapping fragments).
 *   - A guarded TCP header shorter than 20 bytes or with a data offset
 *     below 5 is dropped (PAL_REASON_TRUNCATED); an unguarded one passes.
 *
 * Verdicts: TC_ACT_SHOT drops; every other packet gets TC_ACT_UNSPEC, which
 * is TCX_NEXT under TCX and "continue" for cls_bpf in direct-action mode,
 * so programs attached after Palisade's (a CNI's) still run.
 */
#include "uapi.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"
#include "datapath.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* How many IPv6 extension headers are followed before giving up. */
#define PAL_MAX_EXTHDRS 6

/* Headers starting beyond this offset are always read with the helper
 * (the verifier needs a bound on variable packet offsets). */
#define PAL_MAX_DIRECT_OFF 1024

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#define DNS_PORT 53

/*
 * Load-time configuration (.rodata): pkg/datapath sets them before loading;
 * the verifier then sees them as constants.
 */
volatile const __u16 pal_hbone_port = 15008;
volatile const __u32 pal_proxy_mark = 0x539;
volatile const __u32 pal_proxy_mask = 0xfff;
/* Kubelet probe sources; all-zero disables one. */
volatile const struct pal_addr pal_probe_v4 = {
	.w = {0, 0, bpf_htonl(0x0000ffff), bpf_htonl(0xa9fe077f)}, /* ::ffff:169.254.7.127 */
};
volatile const struct pal_addr pal_probe_v6 = {
	.w = {bpf_htonl(0xfd169254), bpf_htonl(0x71271337), bpf_htonl(0xffffffff), bpf_htonl(0xffffffff)},
};

/* Every enrolled address in the cluster. Written by user space only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pal_addr);
	__type(value, struct pal_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_endpoints SEC(".maps");

/* Packets and bytes per pod, direction, verdict and drop reason; entries
 * are created by the programs on first use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pal_counter_key);
	__type(value, struct pal_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_counters SEC(".maps");

/* One struct pal_event per dropped packet. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_events SEC(".maps");

/* The programs' own troubles (PAL_STAT_*). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PAL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_stats SEC(".maps");

/* Keep struct pal_event in BTF for bpf2go -type (it only lives in the ring). */
const struct pal_event *const pal_event_type __attribute__((unused)) = 0;

struct pal_iphdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct pal_ipv6hdr {
	__u8 ver_tc_flow[4];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	struct pal_addr saddr;
	struct pal_addr daddr;
};

struct pal_fraghdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

struct pal_tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

/* What the parser found after the IP header(s). */
enum pal_l4 {
	PAL_L4_HEADER = 0,   /* l4off points at the header of protocol */
	PAL_L4_NONE,         /* nothing to judge: IPv6 no next header */
	PAL_L4_FRAGMENT,     /* non-first fragment of protocol */
	PAL_L4_TRUNCATED,    /* a header is cut short */
	PAL_L4_UNPARSED,     /* IPv6 extension header chain too long */
};

/* Result of the L3 parse. */
enum pal_parse {
	PAL_PARSE_OK = 0,
	PAL_PARSE_MALFORMED,      /* addresses read, header invalid */
	PAL_PARSE_MALFORMED_ANON, /* not even the addresses could be read */
};

struct pal_pkt {
	struct pal_addr saddr;
	struct pal_addr daddr;
	__u32 l4off;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 protocol;
	__u8 l4; /* enum pal_l4 */
	__u8 tcp_flags;
};

/*
 * pal_load copies len (a constant) bytes at offset off of the packet into
 * dst: straight from the linear area when they are all there (the common
 * case, and much cheaper than a helper call), else with
 * bpf_skb_load_bytes, which also reads paged data. It fails (< 0) only when
 * the packet is shorter than off + len, whichever way is taken.
 */
static __always_inline int pal_load(struct __sk_buff *skb, __u32 off, void *dst, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= PAL_MAX_DIRECT_OFF && data + off + len <= end) {
		__builtin_memcpy(dst, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, dst, len);
}

static __always_inline void pal_stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&pal_stats, &slot);

	if (v)
		*v += 1;
}

static __always_inline int pal_parse_ipv4(struct __sk_buff *skb, struct pal_pkt *p)
{
	struct pal_iphdr ip;
	__u8 ihl;

	p->family = 4;
	if (pal_load(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PAL_PARSE_MALFORMED_ANON;
	p->saddr.w[2] = bpf_htonl(0x0000ffff);
	p->saddr.w[3] = ip.saddr;
	p->daddr.w[2] = bpf_htonl(0x0000ffff);
	p->daddr.w[3] = ip.daddr;
	p->protocol = ip.protocol;
	ihl = ip.ver_ihl & 0x0f;
	if ((ip.ver_ihl >> 4) != 4 || ihl < 5)
		return PAL_PARSE_MALFORMED;
	if (bpf_ntohs(ip.frag_off) & 0x1fff) {
		p->l4 = PAL_L4_FRAGMENT;
		return PAL_PARSE_OK;
	}
	p->l4off = ETH_HLEN + ihl * 4;
	p->l4 = PAL_L4_HEADER;
	return PAL_PARSE_OK;
}

static __always_inline int pal_is_exthdr(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH;
}

static __always_inline int pal_parse_ipv6(struct __sk_buff *skb, struct pal_pkt *p)
{
	struct pal_ipv6hdr ip6;
	__u32 off = ETH_HLEN + sizeof(ip6);
	__u8 nh;

	p->family = 6;
	if (pal_load(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
		return PAL_PARSE_MALFORMED_ANON;
	p->saddr = ip6.saddr;
	p->daddr = ip6.daddr;
	nh = ip6.nexthdr;
	p->protocol = nh;
	if ((ip6.ver_tc_flow[0] >> 4) != 6)
		return PAL_PARSE_MALFORMED;

#pragma unroll
	for (int i = 0; i < PAL_MAX_EXTHDRS; i++) {
		__u8 h[2];

		if (!pal_is_exthdr(nh))
			break;
		if (nh == IPPROTO_FRAGMENT) {
			struct pal_fraghdr fh;

			if (pal_load(skb, off, &fh, sizeof(fh)) < 0) {
				p->l4 = PAL_L4_TRUNCATED;
				return PAL_PARSE_OK;
			}
			nh = fh.nexthdr;
			p->protocol = nh;
			if (bpf_ntohs(fh.frag_off) & 0xfff8) {
				p->l4 = PAL_L4_FRAGMENT;
				return PAL_PARSE_OK;
			}
			off += sizeof(fh);
			continue;
		}
		if (pal_load(skb, off, h, sizeof(h)) < 0) {
			p->l4 = PAL_L4_TRUNCATED;
			return PAL_PARSE_OK;
		}
		/* AH counts its length in 4-byte units minus 2, the others in
		 * 8-byte units minus 1 (RFC 4302, RFC 8200). */
		if (nh == IPPROTO_AH)
			off += ((__u32)h[1] + 2) * 4;
		else
			off += ((__u32)h[1] + 1) * 8;
		nh = h[0];
		p->protocol = nh;
	}
	if (pal_is_exthdr(nh)) {
		p->l4 = PAL_L4_UNPARSED;
		return PAL_PARSE_OK;
	}
	if (nh == IPPROTO_NONE) {
		p->l4 = PAL_L4_NONE;
		return PAL_PARSE_OK;
	}
	p->l4off = off;
	p->l4 = PAL_L4_HEADER;
	return PAL_PARSE_OK;
}

static __always_inline void pal_parse_tcp(struct __sk_buff *skb, struct pal_pkt *p)
{
	struct pal_tcphdr th;

	if (p->l4 != PAL_L4_HEADER || p->protocol != IPPROTO_TCP)
		return;
	if (pal_load(skb, p->l4off, &th, sizeof(th)) < 0 || (th.doff_res >> 4) < 5) {
		p->l4 = PAL_L4_TRUNCATED;
		return;
	}
	p->sport = bpf_ntohs(th.source);
	p->dport = bpf_ntohs(th.dest);
	p->tcp_flags = th.flags;
}

static __always_inline int pal_addr_eq(const struct pal_addr *a, const volatile struct pal_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

static __always_inline int pal_addr_zero(const volatile struct pal_addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0;
}

static __always_inline int pal_is_probe(const struct pal_pkt *p)
{
	const volatile struct pal_addr *probe = p->family == 4 ? &pal_probe_v4 : &pal_probe_v6;

	return !pal_addr_zero(probe) && pal_addr_eq(&p->saddr, probe);
}

/* The guard: PAL_VERDICT_* for a well-formed IP packet; *reason is set for
 * PAL_VERDICT_DROP. */
static __always_inline int pal_guard(const struct pal_pkt *p, const struct pal_endpoint *src,
				     const struct pal_endpoint *dst, __u8 *reason)
{
	int pair = src && dst;
	int strict_in = !pair && dst && dst->mode == PAL_MODE_STRICT;
	int guarded = pair || strict_in;
	int syn_only, hbone = pal_hbone_port;

	switch (p->l4) {
	case PAL_L4_NONE:
		return PAL_VERDICT_PASS;
	case PAL_L4_FRAGMENT:
		if (pair && (p->protocol == IPPROTO_TCP || pal_is_exthdr(p->protocol))) {
			*reason = PAL_REASON_FRAGMENT;
			return PAL_VERDICT_DROP;
		}
		return PAL_VERDICT_PASS;
	case PAL_L4_TRUNCATED:
		if (guarded) {
			*reason = PAL_REASON_TRUNCATED;
			return PAL_VERDICT_DROP;
		}
		return PAL_VERDICT_PASS;
	case PAL_L4_UNPARSED:
		if (guarded) {
			*reason = PAL_REASON_UNPARSED;
			return PAL_VERDICT_DROP;
		}
		return PAL_VERDICT_PASS;
	}
	if (p->protocol != IPPROTO_TCP)
		return PAL_VERDICT_PASS;

	syn_only = (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (p->dport == hbone || (p->sport == hbone && !syn_only))
		return PAL_VERDICT_HBONE;
	if (!guarded)
		return PAL_VERDICT_PASS;
	if (p->dport == DNS_PORT || (p->sport == DNS_PORT && !syn_only))
		return PAL_VERDICT_PASS;
	if (pair) {
		*reason = PAL_REASON_PLAINTEXT;
		return PAL_VERDICT_DROP;
	}
	/* strict_in */
	if (!syn_only || pal_is_probe(p))
		return PAL_VERDICT_PASS;
	*reason = PAL_REASON_STRICT;
	return PAL_VERDICT_DROP;
}

static __always_inline void pal_count(struct __sk_buff *skb, __u32 index, __u8 dir, __u8 verdict,
				      __u8 reason)
{
	struct pal_counter_key key = {
		.index = index,
		.direction = dir,
		.verdict = verdict,
		.reason = reason,
	};
	__u32 segs = skb->gso_segs;
	__u64 packets = segs > 1 ? segs : 1;
	__u64 bytes = skb->len;
	struct pal_counter *c;

	c = bpf_map_lookup_elem(&pal_counters, &key);
	if (!c) {
		struct pal_counter init = {.packets = packets, .bytes = bytes};

		if (bpf_map_update_elem(&pal_counters, &key, &init, BPF_NOEXIST) == 0)
			return;
		/* Another CPU inserted it first, or the map is full. */
		c = bpf_map_lookup_elem(&pal_counters, &key);
		if (!c) {
			pal_stat_inc(PAL_STAT_COUNTERS_FULL);
			return;
		}
	}
	c->packets += packets;
	c->bytes += bytes;
}

static __always_inline void pal_report(struct __sk_buff *skb, const struct pal_pkt *p,
				       const struct pal_endpoint *src,
				       const struct pal_endpoint *dst, __u8 dir, __u8 reason,
				       __u32 mark)
{
	struct pal_event *e = bpf_ringbuf_reserve(&pal_events, sizeof(*e), 0);

	if (!e) {
		pal_stat_inc(PAL_STAT_EVENTS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = bpf_ktime_get_ns();
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->src_index = src ? src->index : 0;
	e->dst_index = dst ? dst->index : 0;
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->mark = mark;
	e->sport = p->sport;
	e->dport = p->dport;
	e->family = p->family;
	e->protocol = p->protocol;
	e->reason = reason;
	e->direction = dir;
	e->tcp_flags = p->tcp_flags;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int pal_handle(struct __sk_buff *skb, __u8 dir)
{
	struct pal_pkt p = {};
	const struct pal_endpoint *src = 0, *dst = 0, *local;
	__u32 mark = skb->mark, newmark;
	__u8 reason = PAL_REASON_NONE;
	int parsed, verdict;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		parsed = pal_parse_ipv4(skb, &p);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		parsed = pal_parse_ipv6(skb, &p);
	else
		return TC_ACT_UNSPEC; /* not IP: untouched, uncounted */

	if (parsed != PAL_PARSE_MALFORMED_ANON) {
		src = bpf_map_lookup_elem(&pal_endpoints, &p.saddr);
		dst = bpf_map_lookup_elem(&pal_endpoints, &p.daddr);
	}
	if (parsed == PAL_PARSE_OK) {
		pal_parse_tcp(skb, &p);
		verdict = pal_guard(&p, src, dst, &reason);
	} else {
		verdict = PAL_VERDICT_DROP;
		reason = PAL_REASON_MALFORMED;
	}
	if (verdict == PAL_VERDICT_DROP && (mark & pal_proxy_mask) == pal_proxy_mark) {
		verdict = PAL_VERDICT_PROXY;
		reason = PAL_REASON_NONE;
	}

	local = dir == PAL_DIR_FROM_POD ? src : dst;
	pal_count(skb, local ? local->index : 0, dir, verdict, reason);
	if (verdict == PAL_VERDICT_DROP) {
		pal_report(skb, &p, src, dst, dir, reason, mark);
		return TC_ACT_SHOT;
	}

	newmark = mark & ~PAL_MARK_MASK;
	if (src)
		newmark |= PAL_MARK_SRC_ENROLLED;
	if (dst)
		newmark |= PAL_MARK_DST_ENROLLED;
	if (newmark != mark)
		skb->mark = newmark;
	return TC_ACT_UNSPEC;
}

/* Packets sent by an enrolled pod: tc ingress of its host-side veth. */
SEC("tc")
int pal_from_pod(struct __sk_buff *skb)
{
	return pal_handle(skb, PAL_DIR_FROM_POD);
}

/* Packets delivered to an enrolled pod: tc egress of its host-side veth. */
SEC("tc")
int pal_to_pod(struct __sk_buff *skb)
{
	return pal_handle(skb, PAL_DIR_TO_POD);
}
