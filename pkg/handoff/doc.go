// Package handoff is the protocol between the node agent and the node proxy:
// the agent tells the proxy which pods are enrolled and passes it each pod's
// network namespace as a file descriptor, so that the proxy can open its
// listeners inside that namespace.
//
// # Transport
//
// The agent listens on a unix socket of type SOCK_SEQPACKET (Go network
// "unixpacket"), mode 0600. Each packet carries exactly one message, so
// message boundaries come from the kernel and no framing is needed. A packet
// larger than [MaxMessageSize] is a protocol error. The netns file descriptor
// travels as SCM_RIGHTS ancillary data on "add" messages, and on no other
// message; descriptors attached to any other message are closed and the
// connection is dropped.
//
// # Messages
//
// Every message is one JSON object:
//
//	{
//	  "version":  1,                 // ProtocolVersion; required
//	  "type":     "hello" | "add" | "del" | "snapshot_sent" | "ack" | "drops",
//	  "id":       7,                 // agent messages: sequence number (>0); ack: id of the message it answers
//	  "workload": { ...workload.Workload... },  // add only; "uid" must be set
//	  "uid":      "…",               // del only
//	  "error":    "…",               // ack only; empty or absent means success
//	  "proxy":    "nodeproxy pid 42", // hello only; free-form, for the agent's logs
//	  "features": ["drops"],         // hello only; optional messages the proxy takes
//	  "drops":    [ {...Drop...} ]   // drops only; at least one
//	}
//
// The conversation on one connection is:
//
//	proxy → agent  hello
//	agent → proxy  add {workload} + netns fd     ┐ snapshot: one add per
//	proxy → agent  ack {id}                      │ workload the agent knows
//	…                                            ┘
//	agent → proxy  snapshot_sent
//	proxy → agent  ack {id}
//	agent → proxy  add / del, each answered by an ack, for as long as the
//	               connection lives
//	agent → proxy  drops {packets the eBPF datapath dropped}, answered by an
//	               ack, at any time after hello, to the newest connection
//	               if its hello listed the "drops" feature
//
// The agent has at most one unacknowledged message per connection; the proxy
// answers every agent message with an ack carrying the handler's error, if
// any. After snapshot_sent the proxy drops every workload that was not in the
// snapshot (adds received on this connection minus dels) and may report
// ready. An add for a uid the proxy already has replaces it. Because of that
// drop, a restarted agent must rebuild its state before it accepts proxies
// (see Server).
//
// # Several proxies
//
// During an upgrade an old and a new proxy are connected at the same time. New
// adds go to the newest connection only (the most recent one to say hello);
// dels go to every connection. When the newest connection goes away while
// older ones remain, the newest of those receives a fresh snapshot if adds
// went to the departed connection, so that it learns about the workloads it
// missed.
//
// # Errors and versions
//
// A connection that sends a packet that is too large, is not valid JSON, has a
// version other than [ProtocolVersion], an unknown type or a missing required
// field is closed; other connections are unaffected. The version changes only
// for incompatible changes; new optional fields do not change it, and unknown
// fields are ignored.
//
// # Why JSON
//
// The messages are small (one workload, or at most MaxDropsPerMessage drops)
// and rare (one per pod start or stop; drop reports are rate-limited by the
// agent to a few hundred drops a second), so encoding cost does not matter. JSON needs no code generation step and no
// schema compiler in the build, is readable in a packet capture (strace,
// socat) when debugging a node, and reuses the JSON tags that
// [workload.Workload] already carries. Protobuf would buy nothing measurable
// here.
package handoff
