// Package l7 holds what the protocol inspectors (http1, h2, httpl7, kafka)
// and the policy engine share: the request descriptions the policy judges,
// the verdict, the per-request records the proxy turns into flows and
// metrics, and the session an inspector serves one connection with.
//
// An inspector sits between the decrypted client stream and the backend
// connection of one TCP connection. It parses each request, asks the Judge,
// forwards allowed requests unchanged (apart from header edits the verdict
// asks for) and answers denied ones itself with the protocol's denial; a
// denied request is never forwarded. Malformed traffic ends that one
// connection with a reason and nothing else.
package l7

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Protocol names the parser a port needs.
type Protocol string

// Protocols the inspectors understand.
const (
	// None means the port carries no L7 rules: bytes are relayed as is.
	None Protocol = ""
	// HTTP covers HTTP/1.1, HTTP/2 (prior-knowledge h2c) and gRPC; the
	// version is sniffed from the first bytes.
	HTTP Protocol = "http"
	// Kafka is the Kafka wire protocol.
	Kafka Protocol = "kafka"
)

// HTTP denial, as Cilium's Envoy answers it.
const (
	DeniedStatus      = http.StatusForbidden
	DeniedContentType = "text/plain"
	DeniedBody        = "Access denied\r\n"
	// GRPCPermissionDenied is the grpc-status code of a denied gRPC call.
	GRPCPermissionDenied = 7
)

// HeaderAction is what to do to a request header when the verdict allows
// the request under a headerMatches rule whose value did not match.
type HeaderAction string

// Header actions (Cilium's headerMatches mismatch actions, minus LOG which
// only logs and therefore appears as a Verdict.Logs entry).
const (
	HeaderAdd     HeaderAction = "ADD"
	HeaderDelete  HeaderAction = "DELETE"
	HeaderReplace HeaderAction = "REPLACE"
)

// HeaderEdit is one change the inspector applies to an allowed request's
// headers before forwarding it. Name is case-insensitive.
type HeaderEdit struct {
	Action HeaderAction
	Name   string
	Value  string
}

// Verdict is the policy decision for one request or connection.
type Verdict struct {
	Allow bool
	// Policy names the policy that decided ("namespace/name" for
	// namespaced kinds, "name" for cluster-wide ones, prefixed with the
	// kind, e.g. "L7Policy shop/api"); empty when the default deny decided.
	Policy string
	// Rule is the path of the deciding rule inside the policy, for example
	// "spec.ingress[0].toPorts[0].rules.http[1]", or "default-deny" for a
	// request no rule allows.
	Rule string
	// Reason says why, in words, for denials and logs.
	Reason string
	// Edits are header changes to apply to an allowed HTTP request.
	Edits []HeaderEdit
	// Logs are messages the rules asked to log (headerMatches LOG).
	Logs []string
}

// HTTPRequest is one HTTP/1.1 or HTTP/2 request as the rules see it.
type HTTPRequest struct {
	// Method is the request method (":method").
	Method string
	// Path is the request target including the query (":path").
	Path string
	// Host is the Host header or ":authority".
	Host string
	// Header holds the regular request headers with canonical keys
	// (net/http's CanonicalHeaderKey), pseudo-headers excluded.
	Header http.Header
}

// GRPC reports the gRPC service and method of r when it is a gRPC call:
// method POST, content-type application/grpc (optionally +suffix or
// ;params) and a path of the form /package.Service/Method.
func (r *HTTPRequest) GRPC() (service, method string, ok bool) {
	if r.Method != http.MethodPost {
		return "", "", false
	}
	ct := r.Header.Get("Content-Type")
	if ct != "application/grpc" && !strings.HasPrefix(ct, "application/grpc+") && !strings.HasPrefix(ct, "application/grpc;") {
		return "", "", false
	}
	p, found := strings.CutPrefix(r.Path, "/")
	if !found {
		return "", "", false
	}
	service, method, found = strings.Cut(p, "/")
	if !found || service == "" || method == "" || strings.ContainsAny(method, "/?") {
		return "", "", false
	}
	return service, method, true
}

// KafkaRequest is one Kafka request as the rules see it.
type KafkaRequest struct {
	APIKey     int16
	APIVersion int16
	// ClientID is the request header's client id ("" when null).
	ClientID string
	// Topics are the distinct topic names the request carries, in order of
	// first appearance; nil when it names none (for example Heartbeat, or
	// a brokers-only Metadata request). "" stands for a topic the
	// inspector cannot name: "all topics" (Metadata with null topics, and
	// the other all-topics forms), a topic id it could not resolve, a
	// subscription regex or a wildcard resource. No topic allow rule
	// matches "", so such requests fail closed under topic rules.
	Topics []string
}

// Judge decides the requests of one connection. Implementations consult
// the policy that is current at each call, so policy changes apply to
// requests on live connections.
type Judge interface {
	HTTP(r *HTTPRequest) Verdict
	Kafka(r *KafkaRequest) Verdict
}

// HTTPRecord describes an HTTP request in a Record.
type HTTPRecord struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Host   string `json:"host,omitempty"`
	// Status is the response status (0 when none was seen).
	Status int `json:"status,omitempty"`
}

// GRPCRecord describes a gRPC call in a Record.
type GRPCRecord struct {
	Service string `json:"service"`
	Method  string `json:"method"`
	// Status is the grpc-status of the response (-1 when none was seen).
	Status int `json:"status"`
}

// KafkaRecord describes a Kafka request in a Record.
type KafkaRecord struct {
	APIKey     int16    `json:"apiKey"`
	API        string   `json:"api"` // kmsg's name, e.g. "Produce"
	APIVersion int16    `json:"apiVersion"`
	ClientID   string   `json:"clientID,omitempty"`
	Topics     []string `json:"topics,omitempty"`
	// ErrorCode is the error the proxy answered a denied request with.
	ErrorCode int16 `json:"errorCode,omitempty"`
}

// Record is one request an inspector saw, reported once: when its
// response started (allowed) or when it was answered by the proxy (denied).
type Record struct {
	// Protocol is "http/1.1", "h2", "grpc" or "kafka".
	Protocol string
	Time     time.Time
	// Duration runs from the end of the request head to the response head
	// (allowed) or to the denial.
	Duration time.Duration
	HTTP     *HTTPRecord
	GRPC     *GRPCRecord
	Kafka    *KafkaRecord
	Verdict  Verdict
}

// Session is what an inspector needs to serve one connection.
type Session struct {
	Judge Judge
	// Observe receives a Record per request; nil discards them.
	Observe func(Record)
	// Log receives one line per malformed input or refused connection;
	// nil discards.
	Log *slog.Logger
}

// Logger returns s.Log or a discarding logger.
func (s *Session) Logger() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Record hands r to Observe when set.
func (s *Session) Record(r Record) {
	if s.Observe != nil {
		s.Observe(r)
	}
}

// ServeFunc is the signature every inspector exports as Serve: it relays
// one connection between client (the decrypted stream from the peer:
// reads are the client's bytes, writes go back to it) and backend (the
// application), judging each request. It returns when the connection is
// over, having closed both sides; the error says why it ended abnormally
// (malformed input, a refused upgrade, ctx ending) and is nil after a
// clean end from either side.
type ServeFunc func(ctx context.Context, client, backend net.Conn, s *Session) error
