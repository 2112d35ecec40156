package http1

import (
	"bytes"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"github.com/palisade-net/palisade/pkg/l7"
)

// bodyKind says how a message's body is delimited (RFC 9112 §6).
type bodyKind int

const (
	bodyNone    bodyKind = iota
	bodyLength           // Content-Length bytes
	bodyChunked          // chunked transfer coding
	bodyClose            // until the sender closes (responses only)
)

// framing is how a message body is delimited.
type framing struct {
	kind bodyKind
	n    int64 // for bodyLength
}

// request is one parsed request head and what the inspector derived from
// it.
type request struct {
	head
	method    string
	target    string
	http10    bool
	host      string // Host header or absolute-form authority
	path      string // what the rules see as the path
	body      framing
	close     bool // the connection ends after this exchange
	expect100 bool
	upgrade   bool // an Upgrade header is present
	connect   bool
}

// parseRequest reads the request head's start line and fields from r.head
// and fills the rest of r, enforcing the framing rules of RFC 9112 that
// keep this inspector and the backend agreeing on where each request ends.
func (r *request) parse() error {
	line := r.startLine()
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errorf("bad request line")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return errorf("bad request line")
	}
	method, target, version := line[:sp1], rest[:sp2], rest[sp2+1:]
	for _, c := range method {
		if !isTokenChar(c) {
			return errorf("bad request method")
		}
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return errorf("bad request target")
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		r.http10 = false
	case "HTTP/1.0":
		r.http10 = true
	default:
		return errorf("unsupported HTTP version")
	}
	r.method = internMethod(method)
	r.target = string(target)
	r.connect = r.method == http.MethodConnect

	r.body = framing{}
	r.expect100, r.upgrade = false, false
	hosts := 0
	var host []byte
	length := int64(-1)
	var te []byte // last transfer coding seen
	chunkedCount, codings := 0, 0
	keepAlive, closeToken := false, false
	for _, f := range r.fields {
		v := r.value(f)
		switch {
		case r.nameIs(f, "host"):
			hosts++
			host = v
		case r.nameIs(f, "content-length"):
			n, ok := parseLength(v, length)
			if !ok {
				return errorf("invalid or conflicting Content-Length")
			}
			length = n
		case r.nameIs(f, "transfer-encoding"):
			forEachElement(v, func(e []byte) {
				codings++
				te = e
				if bytes.EqualFold(e, []byte("chunked")) {
					chunkedCount++
				}
			})
			if codings == 0 {
				return errorf("empty Transfer-Encoding")
			}
		case r.nameIs(f, "connection"):
			if hasToken(v, "close") {
				closeToken = true
			}
			if hasToken(v, "keep-alive") {
				keepAlive = true
			}
		case r.nameIs(f, "expect"):
			if bytes.EqualFold(v, []byte("100-continue")) {
				r.expect100 = true
			}
		case r.nameIs(f, "upgrade"):
			r.upgrade = true
		case r.nameIs(f, "content_length") || r.nameIs(f, "transfer_encoding"):
			// Servers that map '_' to '-' (CGI-style environments)
			// would frame the body by a field this parser ignores.
			return errorf("underscore variant of a framing header")
		}
	}
	// HTTP/1.1 persists unless told otherwise; HTTP/1.0 only when asked
	// (RFC 9112 §9.3).
	r.close = closeToken || r.http10 && !keepAlive
	switch {
	case hosts > 1:
		return errorf("more than one Host header")
	case hosts == 0 && !r.http10:
		return errorf("missing Host header")
	}
	r.host = string(host)

	if codings > 0 {
		switch {
		case length >= 0:
			return errorf("both Content-Length and Transfer-Encoding")
		case r.http10:
			return errorf("Transfer-Encoding in an HTTP/1.0 request")
		case chunkedCount != 1 || !bytes.EqualFold(te, []byte("chunked")):
			return errorf("Transfer-Encoding does not end in a single chunked")
		}
		r.body = framing{kind: bodyChunked}
	} else if length > 0 {
		r.body = framing{kind: bodyLength, n: length}
	}
	if r.connect && r.body.kind != bodyNone {
		return errorf("CONNECT with a body")
	}
	return r.parseTarget()
}

// parseTarget derives path and host from the request target's form (RFC
// 9112 §3.2).
func (r *request) parseTarget() error {
	t := r.target
	switch {
	case r.connect:
		// authority-form: the rules see the authority as the host and
		// no path, like HTTP/2's CONNECT.
		if strings.ContainsAny(t, "/?#@") {
			return errorf("CONNECT target is not an authority")
		}
		r.host, r.path = t, ""
	case t[0] == '/':
		r.path = t
	case t == "*":
		if r.method != http.MethodOptions {
			return errorf("asterisk target outside OPTIONS")
		}
		r.path = t
	default:
		// absolute-form: the authority is the host (RFC 9112 §3.2.2).
		// A Host header that disagrees would let the backend route on
		// something the rules never saw, so it is refused.
		u, err := url.ParseRequestURI(t)
		if err != nil || u.Host == "" || u.Scheme != "http" && u.Scheme != "https" || u.Opaque != "" || u.User != nil {
			return errorf("bad absolute-form request target")
		}
		if r.host != "" && !strings.EqualFold(r.host, u.Host) {
			return errorf("Host header disagrees with the request target")
		}
		r.host = u.Host
		r.path = u.EscapedPath()
		if r.path == "" {
			r.path = "/"
		}
		if u.RawQuery != "" || u.ForceQuery {
			r.path += "?" + u.RawQuery
		}
	}
	return nil
}

// l7Request is the request as the rules see it. Host is in its own field
// and not among the headers, as net/http and HTTP/2's :authority have it,
// so rules see the same request over either protocol.
func (r *request) l7Request() *l7.HTTPRequest {
	hdr := make(http.Header, len(r.fields))
	for _, f := range r.fields {
		if r.nameIs(f, "host") {
			continue
		}
		k := textproto.CanonicalMIMEHeaderKey(string(r.name(f)))
		hdr[k] = append(hdr[k], string(r.value(f)))
	}
	return &l7.HTTPRequest{Method: r.method, Path: r.path, Host: r.host, Header: hdr}
}

// internMethod returns the common methods without allocating.
func internMethod(m []byte) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodOptions:
		return http.MethodOptions
	case http.MethodConnect:
		return http.MethodConnect
	}
	return string(m)
}
