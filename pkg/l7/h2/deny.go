package h2

import (
	"bytes"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
)

// literalBlock encodes fields for a header block the proxy injects toward
// the client. The client's HPACK decoder shares its dynamic table with
// the backend's encoder, so an injected block must not change that table:
// every field is marked sensitive, which makes hpack.Encoder use only the
// static table and the "never indexed" literal representation (RFC 7541
// §6.2.3). A fresh encoder never emits a table size update, and its own
// dynamic table stays empty because nothing is ever indexed.
func literalBlock(fields ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range fields {
		f.Sensitive = true
		_ = enc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	return buf.Bytes()
}

// denial is the proxy's answer to a denied stream.
type denial struct {
	block []byte // HEADERS block
	body  []byte // DATA, or nil for a headers-only response
}

// denyResponse builds the answer to a denied request: a trailers-only
// gRPC response with PERMISSION_DENIED for gRPC calls, 403 with the
// fixed body otherwise (no body for HEAD).
func denyResponse(r *l7.HTTPRequest, v l7.Verdict) denial {
	if _, _, ok := r.GRPC(); ok {
		return denial{block: literalBlock(
			hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"},
			hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(l7.GRPCPermissionDenied)},
			hpack.HeaderField{Name: "grpc-message", Value: percentEncode(grpcMessage(v))},
		)}
	}
	d := denial{block: literalBlock(
		hpack.HeaderField{Name: ":status", Value: strconv.Itoa(l7.DeniedStatus)},
		hpack.HeaderField{Name: "content-type", Value: l7.DeniedContentType},
		hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(l7.DeniedBody))},
	)}
	if r.Method != "HEAD" {
		d.body = []byte(l7.DeniedBody)
	}
	return d
}

// statusBlock is a headers-only response with just a status.
func statusBlock(status int) []byte {
	return literalBlock(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
}

// grpcMessage says why a call was denied, naming policy and rule.
func grpcMessage(v l7.Verdict) string {
	var b strings.Builder
	b.WriteString("access denied")
	if v.Reason != "" {
		b.WriteString(": ")
		b.WriteString(v.Reason)
	}
	if v.Policy != "" || v.Rule != "" {
		b.WriteString(" (policy ")
		b.WriteString(orNone(v.Policy))
		b.WriteString(", rule ")
		b.WriteString(orNone(v.Rule))
		b.WriteString(")")
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "default deny"
	}
	return s
}

// percentEncode encodes a grpc-message value as the gRPC HTTP/2 protocol
// asks: bytes outside printable ASCII, and '%', as %XX. (grpc-go's
// encoder is internal to it; url.PathEscape encodes a different set.)
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
