// Package l7test holds the test harness the HTTP inspectors' tests share
// (packages h2, http1 and httpl7): a stub judge, a loopback proxy running
// an inspector's Serve for every connection and keeping what it reports,
// a recording backend handler, in-memory connections for the fuzz
// targets, and the byte-relay baseline and request loop of the
// benchmarks.
//
// It is used by tests only. What differs between the protocols (backend
// answers, raw clients, frame decoding) stays in each package's tests.
package l7test

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
)

// Rules the stub judge's verdicts name: the first denies, the second
// allows.
const (
	DenyRule  = "spec.ingress[0].toPorts[0].rules.http[0]"
	AllowRule = "spec.ingress[0].toPorts[0].rules.http[1]"
)

// Judge is a stub l7.Judge for HTTP. It denies a request whose path
// starts with one of Deny (or, for a request without a path such as
// CONNECT, whose host does), and allows any other with the Edits of every
// prefix its path starts with. Its verdicts name Policy and DenyRule or
// AllowRule. It judges every Kafka request with the zero Verdict.
type Judge struct {
	Policy string
	Deny   []string
	Edits  map[string][]l7.HeaderEdit
}

// HTTP judges r.
func (j *Judge) HTTP(r *l7.HTTPRequest) l7.Verdict {
	for _, p := range j.Deny {
		if strings.HasPrefix(r.Path, p) || r.Path == "" && strings.HasPrefix(r.Host, p) {
			return l7.Verdict{Policy: j.Policy, Rule: DenyRule, Reason: "path " + r.Path + " is not allowed"}
		}
	}
	v := l7.Verdict{Allow: true, Policy: j.Policy, Rule: AllowRule}
	for p, e := range j.Edits {
		if strings.HasPrefix(r.Path, p) {
			v.Edits = append(v.Edits, e...)
		}
	}
	return v
}

// Kafka returns the zero Verdict.
func (j *Judge) Kafka(*l7.KafkaRequest) l7.Verdict { return l7.Verdict{} }

// LogBuffer keeps what is written to it, for assertions on logs; it is
// safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns all that was written.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Listen returns a TCP listener on a free loopback port, failing tb if
// there is none. Closing it is the caller's business.
func Listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// StartServer serves srv on a new loopback listener until tb's cleanup
// closes srv, and returns the listener's address.
func StartServer(tb testing.TB, srv *http.Server) string {
	tb.Helper()
	ln := Listen(tb)
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// CheckDenied fails tb unless resp, with its whole body read into body,
// is the inspectors' well-formed denial (l7.DeniedStatus, with
// l7.DeniedBody); head says the request was a HEAD, whose denial has the
// same Content-Length but no body.
func CheckDenied(tb testing.TB, resp *http.Response, body string, head bool) {
	tb.Helper()
	if resp.StatusCode != l7.DeniedStatus {
		tb.Fatalf("status %d, want %d", resp.StatusCode, l7.DeniedStatus)
	}
	if ct := resp.Header.Get("Content-Type"); ct != l7.DeniedContentType {
		tb.Fatalf("Content-Type %q", ct)
	}
	if resp.ContentLength != int64(len(l7.DeniedBody)) {
		tb.Fatalf("Content-Length %d", resp.ContentLength)
	}
	want := l7.DeniedBody
	if head {
		want = ""
	}
	if body != want {
		tb.Fatalf("body %q, want %q", body, want)
	}
}
