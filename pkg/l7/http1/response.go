package http1

import (
	"bytes"
	"net/http"
	"strconv"
)

// response is one parsed response head from the backend.
type response struct {
	head
	status int
	body   framing
	close  bool // the backend ends the connection after this response
}

// parse reads the status line and derives the body framing (RFC 9112
// §6.3) for a response to a request with the given method.
func (r *response) parse(method string) error {
	line := r.startLine()
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
		line[7] != '0' && line[7] != '1' || len(line) > 12 && line[12] != ' ' {
		return errorf("bad status line from the backend")
	}
	http10 := line[7] == '0'
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 || code > 999 {
		return errorf("bad status code from the backend")
	}
	r.status = code

	length := int64(-1)
	var te []byte
	codings := 0
	closeToken, keepAlive := false, false
	for _, f := range r.fields {
		v := r.value(f)
		switch {
		case r.nameIs(f, "content-length"):
			n, ok := parseLength(v, length)
			if !ok {
				return errorf("invalid or conflicting Content-Length from the backend")
			}
			length = n
		case r.nameIs(f, "transfer-encoding"):
			forEachElement(v, func(e []byte) {
				codings++
				te = e
			})
		case r.nameIs(f, "connection"):
			closeToken = closeToken || hasToken(v, "close")
			keepAlive = keepAlive || hasToken(v, "keep-alive")
		}
	}
	r.close = closeToken || http10 && !keepAlive
	switch {
	case code < 200 || code == http.StatusNoContent || code == http.StatusNotModified || method == http.MethodHead:
		r.body = framing{}
	case method == http.MethodConnect && code < 300:
		r.body = framing{} // a tunnel follows
	case codings > 0:
		if bytes.EqualFold(te, []byte("chunked")) {
			r.body = framing{kind: bodyChunked}
		} else {
			r.body = framing{kind: bodyClose}
		}
		// Transfer-Encoding overrides Content-Length, but the pair is
		// a smuggling sign: the connection must not be reused.
		if length >= 0 {
			r.close = true
		}
	case length >= 0:
		r.body = framing{kind: bodyLength, n: length}
	default:
		r.body = framing{kind: bodyClose}
	}
	if r.body.kind == bodyClose {
		r.close = true
	}
	return nil
}
