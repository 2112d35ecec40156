package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// ErrMalformed is wrapped by every error Serve returns because the client
// (or the backend) broke HTTP/1.1 syntax or framing.
var ErrMalformed = errors.New("malformed HTTP/1.1")

// malformed is a syntax or framing error with the reason logged and
// returned.
type malformed struct{ reason string }

func (e *malformed) Error() string        { return ErrMalformed.Error() + ": " + e.reason }
func (e *malformed) Is(target error) bool { return target == ErrMalformed }

func errorf(reason string) error { return &malformed{reason: reason} }

// field is one header field line of a head, as offsets into head.buf.
type field struct {
	start, end       int // the line without its CRLF
	nameEnd          int // end of the field name
	valStart, valEnd int // the value without surrounding whitespace
}

// head is a message head as received: the start line and the field lines,
// each terminated by CRLF, then the empty line. The bytes are kept so an
// allowed request is forwarded as the client wrote it.
//
// http.ReadRequest would parse the head, but it canonicalises names, drops
// the order and the raw lines, and decodes bodies; re-serialising its
// result would change what the backend parses. A transparent inspector
// needs the bytes, and its own framing checks, strict where a smuggling
// attempt hides.
type head struct {
	buf     []byte
	lineEnd int // end of the start line's content in buf
	fields  []field
}

func (h *head) startLine() []byte    { return h.buf[:h.lineEnd] }
func (h *head) name(f field) []byte  { return h.buf[f.start:f.nameEnd] }
func (h *head) value(f field) []byte { return h.buf[f.valStart:f.valEnd] }
func (h *head) line(f field) []byte  { return h.buf[f.start:f.end] }

// nameIs reports whether the field's name is name, ignoring case; name is
// lower case.
func (h *head) nameIs(f field, name string) bool {
	n := h.name(f)
	if len(n) != len(name) {
		return false
	}
	for i := range n {
		if lower(n[i]) != name[i] {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// reset empties h, keeping its buffers.
func (h *head) reset() {
	h.buf = h.buf[:0]
	h.lineEnd = 0
	h.fields = h.fields[:0]
}

// read reads a head from br into h: the start line (after at most a few
// empty lines when skipEmpty, RFC 9112 §2.2) and the field lines up to the
// empty line, in at most limit bytes. io.EOF means the peer closed before
// sending a byte of it.
func (h *head) read(br *bufio.Reader, limit int, skipEmpty bool) error {
	h.reset()
	var n int
	var err error
	for skipped := 0; ; skipped++ {
		h.buf, n, err = appendLine(h.buf[:0], br, limit)
		if err != nil {
			return lineError(err, "start line", skipped > 0)
		}
		if n > 0 || !skipEmpty || skipped >= 4 {
			break
		}
		limit -= 2
	}
	if n == 0 {
		return errorf("empty start line")
	}
	h.lineEnd = n
	for {
		start := len(h.buf)
		h.buf, n, err = appendLine(h.buf, br, limit-start)
		if err != nil {
			return lineError(err, "header section", true)
		}
		if n == 0 {
			return nil
		}
		f, err := parseField(h.buf, start, start+n)
		if err != nil {
			return err
		}
		h.fields = append(h.fields, f)
	}
}

// lineError turns an appendLine error into a malformed-input error, or
// returns io.EOF for a clean close before the head started.
func lineError(err error, where string, started bool) error {
	switch {
	case err == io.EOF && !started:
		return io.EOF
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return errorf("connection closed inside the " + where)
	case err == errLineTooLong:
		return errorf("head larger than the limit")
	case err == errBareCR:
		return errorf("bare CR in the " + where)
	}
	return err
}

// parseField checks one field line, buf[start:end], and returns its
// offsets. Obsolete line folding and whitespace before the colon are
// refused (RFC 9112 §5.1, §5.2): both are classic request smuggling
// vectors.
func parseField(buf []byte, start, end int) (field, error) {
	line := buf[start:end]
	if line[0] == ' ' || line[0] == '\t' {
		return field{}, errorf("obsolete line folding")
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return field{}, errorf("header line without a field name and colon")
	}
	for _, c := range line[:colon] {
		if !isTokenChar(c) {
			return field{}, errorf("invalid character in a field name")
		}
	}
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	for _, c := range line[vs:ve] {
		if !isValueChar(c) {
			return field{}, errorf("invalid character in a field value")
		}
	}
	return field{start: start, end: end, nameEnd: start + colon, valStart: start + vs, valEnd: start + ve}, nil
}

// isTokenChar reports whether c may appear in a token (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isValueChar reports whether c may appear in a field value (RFC 9110
// §5.5): visible characters, space, tab and obs-text.
func isValueChar(c byte) bool {
	return c == '\t' || c >= ' ' && c != 0x7f
}

// isToken reports whether s is a non-empty token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// forEachElement calls fn with each non-empty element of a comma-separated
// list value (RFC 9110 §5.6.1), trimmed of whitespace.
func forEachElement(v []byte, fn func(e []byte)) {
	for len(v) > 0 {
		var e []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			e, v = v[:i], v[i+1:]
		} else {
			e, v = v, nil
		}
		e = bytes.Trim(e, " \t")
		if len(e) > 0 {
			fn(e)
		}
	}
}

// parseLength parses a Content-Length value: one or more identical
// decimal numbers (a list of equal values is allowed by RFC 9112 §6.3).
func parseLength(v []byte, prev int64) (int64, bool) {
	ok := true
	n := prev
	elements := 0
	forEachElement(v, func(e []byte) {
		elements++
		m, valid := parseDecimal(e)
		if !valid || n >= 0 && m != n {
			ok = false
			return
		}
		n = m
	})
	return n, ok && elements > 0
}

// parseDecimal parses a non-negative decimal of at most 18 digits.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// hasToken reports whether the list value v contains token (lower case),
// ignoring case.
func hasToken(v []byte, token string) bool {
	found := false
	forEachElement(v, func(e []byte) {
		if !found && len(e) == len(token) && bytes.EqualFold(e, []byte(token)) {
			found = true
		}
	})
	return found
}
