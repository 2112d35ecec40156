package h2

import (
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
)

// connectionSpecific are the fields HTTP/2 forbids (RFC 9113 §8.2.2).
var connectionSpecific = []string{"connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"}

// parseRequest checks a request header block (RFC 9113 §8.3.1) and
// returns the request as the rules see it, or why it is malformed. The
// Framer already checked field names, values and pseudo-header order.
func parseRequest(fields []hpack.HeaderField) (*l7.HTTPRequest, string) {
	r := &l7.HTTPRequest{Header: make(http.Header, len(fields))}
	var scheme, host string
	var hasPath, hasScheme, hasProtocol, hasHost bool
	for _, f := range fields {
		if !f.IsPseudo() {
			break
		}
		switch f.Name {
		case ":method":
			r.Method = f.Value
		case ":path":
			r.Path, hasPath = f.Value, true
		case ":authority":
			r.Host = f.Value
		case ":scheme":
			scheme, hasScheme = f.Value, true
		case ":protocol":
			hasProtocol = true
		default:
			return nil, "pseudo-header " + f.Name + " in a request"
		}
	}
	for _, f := range fields {
		if f.IsPseudo() {
			continue
		}
		for _, c := range connectionSpecific {
			if f.Name == c {
				return nil, "connection-specific header " + f.Name
			}
		}
		if f.Name == "te" && f.Value != "trailers" {
			return nil, "te other than trailers"
		}
		if f.Name == "host" {
			if hasHost {
				return nil, "more than one host header"
			}
			host, hasHost = f.Value, true
		}
		k := textproto.CanonicalMIMEHeaderKey(f.Name)
		r.Header[k] = append(r.Header[k], f.Value)
	}
	switch {
	case r.Method == "":
		return nil, "missing :method"
	case r.Method == http.MethodConnect && !hasProtocol:
		if hasPath || hasScheme || r.Host == "" {
			return nil, "CONNECT needs :authority and no :scheme or :path"
		}
	case !hasPath || r.Path == "" || !hasScheme || scheme == "":
		return nil, "missing :scheme or :path"
	case hasProtocol && r.Method != http.MethodConnect:
		return nil, ":protocol outside extended CONNECT"
	case r.Path[0] != '/' && !(r.Path == "*" && r.Method == http.MethodOptions):
		return nil, "bad :path"
	}
	switch {
	case r.Host == "":
		r.Host = host
	case hasHost && !strings.EqualFold(host, r.Host):
		// The backend might route on host; the rules judged :authority.
		return nil, "host header disagrees with :authority"
	}
	return r, ""
}

// protectedHeaders are the fields a verdict's edits may not touch: framing
// and routing were checked before the verdict.
var protectedHeaders = []string{"content-length", "te", "host", "trailer", "http2-settings"}

// checkEdit reports why e cannot be applied, or "" when it can.
func checkEdit(e l7.HeaderEdit) string {
	if !isToken(e.Name) {
		return "invalid header name"
	}
	if e.Action != l7.HeaderAdd && e.Action != l7.HeaderDelete && e.Action != l7.HeaderReplace {
		return "unknown action"
	}
	for i := 0; i < len(e.Value); i++ {
		if c := e.Value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return "invalid header value"
		}
	}
	name := strings.ToLower(e.Name)
	for _, list := range [][]string{protectedHeaders, connectionSpecific} {
		for _, p := range list {
			if name == p {
				return "protected header"
			}
		}
	}
	return ""
}

// applyEdits returns fields with the (checked) edits applied; names are
// lower-cased as HTTP/2 requires.
func applyEdits(fields []hpack.HeaderField, edits []l7.HeaderEdit) []hpack.HeaderField {
	out := append([]hpack.HeaderField(nil), fields...)
	for _, e := range edits {
		name := strings.ToLower(e.Name)
		switch e.Action {
		case l7.HeaderAdd:
			out = append(out, hpack.HeaderField{Name: name, Value: e.Value})
		case l7.HeaderDelete:
			out = deleteField(out, name, -1)
		case l7.HeaderReplace:
			i := indexField(out, name)
			if i < 0 {
				out = append(out, hpack.HeaderField{Name: name, Value: e.Value})
				continue
			}
			out[i] = hpack.HeaderField{Name: name, Value: e.Value}
			out = deleteField(out, name, i)
		}
	}
	return out
}

func indexField(fields []hpack.HeaderField, name string) int {
	for i, f := range fields {
		if f.Name == name {
			return i
		}
	}
	return -1
}

// deleteField removes the fields named name except the one at keep.
func deleteField(fields []hpack.HeaderField, name string, keep int) []hpack.HeaderField {
	out := fields[:0]
	for i, f := range fields {
		if f.Name != name || i == keep {
			out = append(out, f)
		}
	}
	return out
}

// isToken reports whether s is a non-empty token (RFC 9110 §5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
