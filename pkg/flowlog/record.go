// Package flowlog is the node proxy's flow record pipeline: the JSON record
// of one connection or one L7 request, the selection of what is written to
// the flow log file (FlowLog objects), the size-capped rotating file
// writer, and the hub that streams live records to admin API clients.
//
// Nothing on the traffic path ever waits for a sink: every sink has a
// bounded queue, and a record that does not fit is counted as dropped
// (palisade_flow_records_total{outcome="dropped"}) instead of blocking a
// connection or being lost silently.
package flowlog

import (
	"cmp"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// Record types.
const (
	TypeConnection = "connection"
	TypeRequest    = "request"
	// TypePacket is a packet the node's eBPF datapath dropped, as the
	// agent reported it (verdict Dropped, the datapath's reason).
	TypePacket = "packet"
	// TypeLost is a stream marker: Lost records were left out for this
	// subscriber because it read too slowly.
	TypeLost = "lost"
)

// Protocols of records (the protocol label of metrics, too).
const (
	ProtoTCP   = "tcp" // connection records
	ProtoHTTP  = "http"
	ProtoGRPC  = "grpc"
	ProtoKafka = "kafka"
	// Packet records carry the packet's IP protocol.
	ProtoUDP    = "udp"
	ProtoICMP   = "icmp"
	ProtoICMPv6 = "icmpv6"
)

// Verdicts of records.
const (
	Allowed = "allowed"
	Denied  = "denied"
	Failed  = "failed"
	Revoked = "revoked"
	// Dropped is the verdict of packet records: the kernel dropped it.
	Dropped = "dropped"
)

// protocols and verdicts are the values of the protocol and verdict fields
// (read only).
var (
	protocols = []string{ProtoTCP, ProtoHTTP, ProtoGRPC, ProtoKafka, ProtoUDP, ProtoICMP, ProtoICMPv6}
	verdicts  = []string{Allowed, Denied, Failed, Revoked, Dropped}
	types     = []string{TypeConnection, TypeRequest, TypePacket}
)

// Endpoint is one side of a flow.
type Endpoint struct {
	// Pod and Namespace name the pod; empty outside the cluster.
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Workload is the pod's workload name (see WorkloadName).
	Workload string `json:"workload,omitempty"`
	// Identity is the SPIFFE ID: verified from the certificate for HBONE
	// peers, the pod's own for local pods.
	Identity string `json:"identity,omitempty"`
	// Address is ip:port (the port is the client's ephemeral port for
	// sources, the service port for destinations).
	Address string `json:"address,omitempty"`
	// Labels are the pod's labels, for FlowLog pod selectors; not logged.
	Labels map[string]string `json:"-"`
}

// Record is one flow record: a connection when it ends (or is refused), an
// L7 request when its response starts (or it is denied), or a packet the
// eBPF datapath dropped.
type Record struct {
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	Node      string    `json:"node,omitempty"`
	Direction string    `json:"direction,omitempty"`
	// Pod is the pod on this node the record belongs to, namespace/name.
	Pod         string   `json:"pod,omitempty"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	// Service is the Service (namespace/name) the destination was reached
	// through, for outbound connections to a Service VIP.
	Service   string `json:"service,omitempty"`
	Transport string `json:"transport,omitempty"` // hbone or plaintext
	// Protocol is tcp for connections, http, grpc or kafka for requests,
	// the IP protocol (tcp, udp, icmp, icmpv6, or its number) for packets.
	Protocol string `json:"protocol"`
	// Parser is the L7 inspector a connection ran through (http, kafka).
	Parser string `json:"parser,omitempty"`
	// HTTPVersion is 1.1 or 2 for HTTP and gRPC requests.
	HTTPVersion string          `json:"httpVersion,omitempty"`
	HTTP        *l7.HTTPRecord  `json:"http,omitempty"`
	GRPC        *l7.GRPCRecord  `json:"grpc,omitempty"`
	Kafka       *l7.KafkaRecord `json:"kafka,omitempty"`
	// Packet describes a dropped packet.
	Packet  *Packet `json:"packet,omitempty"`
	Verdict string  `json:"verdict"`
	Policy  string  `json:"policy,omitempty"`
	Rule    string  `json:"rule,omitempty"`
	Reason  string  `json:"reason,omitempty"`
	// BytesSent went towards the destination, BytesReceived came back.
	BytesSent     int64   `json:"bytesSent,omitempty"`
	BytesReceived int64   `json:"bytesReceived,omitempty"`
	DurationMs    float64 `json:"durationMs"`
	// Lost counts records left out of a stream before this marker.
	Lost int64 `json:"lost,omitempty"`
}

// Packet is what a packet record tells of the packet beyond its
// addresses.
type Packet struct {
	// Interface is the node's side of the pod's veth it was dropped on.
	Interface string `json:"interface,omitempty"`
	// Length is the packet's length in bytes.
	Length uint32 `json:"length,omitempty"`
	// TCPFlags are the TCP flags, as FIN|SYN|RST|PSH|ACK|URG|ECE|CWR.
	TCPFlags string `json:"tcpFlags,omitempty"`
}

// Ms converts a duration to the milliseconds of DurationMs.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// WorkloadName is the workload a pod belongs to, the value of the
// workload labels of metrics and records: the label
// app.kubernetes.io/name, else app, else the name of the pod's controller
// as Kubernetes writes it into the pod's labels and name: a Deployment's
// (the pod name without the ReplicaSet's pod-template-hash and random
// suffix), a StatefulSet's (without the ordinal), a DaemonSet's (without
// the random suffix), a Job's (its job-name label, and for a CronJob's Job
// without the scheduled-time suffix). Other pods are named by themselves.
// Pods of one controller thus share a label value however often they are
// replaced, which keeps metric series bounded.
func WorkloadName(pod string, labels map[string]string) string {
	if v := labels["app.kubernetes.io/name"]; v != "" {
		return v
	}
	if v := labels["app"]; v != "" {
		return v
	}
	if job := cmp.Or(labels["batch.kubernetes.io/job-name"], labels["job-name"]); job != "" {
		// A CronJob names its Jobs <cronjob>-<scheduled minutes>.
		if i := strings.LastIndexByte(job, '-'); i > 0 && isDigits(job[i+1:]) {
			return job[:i]
		}
		return job
	}
	if h := labels["pod-template-hash"]; h != "" {
		if i := strings.LastIndex(pod, "-"+h+"-"); i > 0 {
			return pod[:i]
		}
	}
	if labels["statefulset.kubernetes.io/pod-name"] == pod || labels["controller-revision-hash"] != "" {
		// StatefulSet: <name>-<ordinal>; DaemonSet: <name>-<random>.
		if i := strings.LastIndexByte(pod, '-'); i > 0 {
			return pod[:i]
		}
	}
	return pod
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
