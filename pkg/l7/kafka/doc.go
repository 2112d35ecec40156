// Package kafka is the Kafka inspector of the node proxy: it sits between
// the decrypted stream of a Kafka client and the broker, decodes every
// request with github.com/twmb/franz-go/pkg/kmsg, asks the session's
// l7.Judge about it, forwards allowed requests byte for byte and answers
// denied ones itself with a well-formed response of the request's key and
// version whose every entry carries an authorization error. A denied
// request never reaches the broker.
//
// # Framing and fail-closed parsing
//
// A request is an int32 size followed by the request header (api key,
// version, correlation id, nullable client id, and tagged fields from the
// flexible header v2 on) and the body. Every key and version kmsg knows is
// decoded in full into kmsg's types. The decoders are a generated copy of
// kmsg's (decode_gen.go, see internal/gendecode) that differs only in
// stopping at once when a tagged-field count runs past the input: kmsg's
// own loops keep counting, so a dozen bytes can cost tens of seconds of
// CPU. An unknown key, a version newer than kmsg knows, a size outside
// [8 bytes, 100 MiB] or a body that does not decode closes that one
// connection with a logged reason (errors ErrUnsupported and
// ErrMalformed). The one exception is ApiVersions at a version newer than
// kmsg knows: Kafka's version negotiation defines the answer (a v0
// response with UNSUPPORTED_VERSION and the supported ApiVersions range),
// so the inspector gives it and the client retries at a version it can
// read. SASLHandshake v0 is refused when allowed, because it switches the
// connection to raw SASL frames that cannot be inspected.
//
// # Ordering
//
// Kafka clients pipeline requests and the broker answers them in order.
// The inspector keeps that contract without serialising the connection:
// allowed requests are forwarded as soon as they are judged, and every
// request, allowed or denied, takes a place in one in-order queue. The
// goroutine that writes to the client walks that queue: for a forwarded
// request it relays the broker's next response (whose correlation id must
// match, or the connection is closed), for a denied one it writes the
// denial, so a denial is sent only after all earlier responses. Produce
// with acks=0 gets no response from a broker; such a request takes no
// place in the queue (allowed: forwarded only; denied: dropped), and both
// are recorded. A strict lock-step relay (request N+1 forwarded only after
// response N) would have been simpler but costs a round trip per request
// for pipelining producers; BenchmarkServe measures the pipelined path.
//
// # Topics the policy sees
//
// l7.KafkaRequest.Topics holds the distinct topic names of the request,
// taken from a per-key table that covers every request kmsg knows
// (produce and fetch partitions, offsets, metadata, config and ACL
// resources of type TOPIC, consumer-group subscriptions, transaction
// partitions, admin and inter-broker requests). Two conventions keep
// topic rules failing closed:
//
//   - "" stands for a topic the proxy cannot name: a topic id it has not
//     learnt, a subscription regex, a prefixed ACL pattern, and "all
//     topics" (a Metadata request with null topics or v0's empty list, an
//     OffsetFetch of every committed topic, DescribeLogDirs, ElectLeaders
//     or ListPartitionReassignments of every partition). A topic rule never
//     matches "", so only rules without a topic restriction allow such a
//     request; Cilium behaves the same way for a Metadata request without
//     topics (a topic-restricted rule does not match it). A Metadata
//     request with an empty (non-null) list at v1+ asks for brokers only
//     and carries no topics (Topics is nil).
//   - Topic ids (Fetch v13+, Produce v13, OffsetCommit/OffsetFetch v10,
//     TxnOffsetCommit v6, share-group and KIP-848 requests) are resolved
//     with a per-connection map learnt from the Metadata (v10+),
//     CreateTopics (v7+) and DescribeTopicPartitions responses the broker
//     sent on the same connection. Clients usually fetch on another
//     connection than the one they read metadata on, so the inspector also
//     lowers the maximum versions the broker advertises in its ApiVersions
//     response for Produce, Fetch, OffsetCommit, OffsetFetch,
//     TxnOffsetCommit and AlterPartition to the last version that still
//     carries topic names (12, 12, 9, 9, 5, 1). That response is the only
//     one the inspector re-encodes; every other response is relayed byte
//     for byte.
//
// Fetch sessions (KIP-227) let an incremental fetch omit the partitions it
// keeps reading. The inspector tracks the sessions created on its
// connection (from each Fetch response's session id) and judges an
// incremental fetch on the union of its own topics and its session's, so a
// policy change applies to partitions already in a session; an incremental
// fetch on a session the inspector does not know carries "". A denied
// fetch answers with session id 0, which makes the client fall back to a
// full fetch that names every partition.
//
// # Denials
//
// A denial is a response of the request's key and version (response header
// v1 with empty tagged fields for flexible versions, except ApiVersions
// whose response header is always v0) that echoes the request's topics,
// partitions, groups, transactional ids and resources with an
// authorization error: 29 TOPIC_AUTHORIZATION_FAILED in topic and
// partition entries, 30 GROUP_AUTHORIZATION_FAILED for groups, 53
// TRANSACTIONAL_ID_AUTHORIZATION_FAILED for transactional ids and 31
// CLUSTER_AUTHORIZATION_FAILED for cluster-level requests (inter-broker
// and KRaft requests, ACLs, quotas, SCRAM, delegation tokens, features,
// broker config resources). Each error is reported at the most specific
// level the response has: when entries carry it, a top-level ErrorCode
// stays 0 (a Fetch's top level is about fetch sessions and a Metadata v13
// top level about re-bootstrapping, so clients would misread an
// authorization code there); when there is no entry to carry it, the top
// level does. ErrorMessage fields, where the version has them, say
// "palisade: " and the verdict's reason. Offsets, watermarks, epochs and
// ids are -1 or kmsg's defaults. A denied Metadata request is answered
// with the broker list of a brokers-only Metadata request the inspector
// sends in its place (never the denied request itself), because clients
// replace their broker list with the one in every Metadata response.
package kafka
