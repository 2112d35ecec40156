package http1

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/palisade-net/palisade/pkg/l7"
)

// protectedHeaders are the fields a verdict's edits may not touch: they
// decide message framing, connection handling or routing, which were
// checked before the verdict, so changing them afterwards would reopen
// request smuggling or route the request somewhere the rules never saw.
var protectedHeaders = []string{
	"content-length", "transfer-encoding", "connection", "keep-alive",
	"proxy-connection", "te", "trailer", "upgrade", "http2-settings", "host", "expect",
}

// checkEdit reports why e cannot be applied, or "" when it can.
func checkEdit(e l7.HeaderEdit) string {
	switch {
	case !isToken(e.Name):
		return "invalid header name"
	case e.Action != l7.HeaderAdd && e.Action != l7.HeaderDelete && e.Action != l7.HeaderReplace:
		return "unknown action"
	}
	for i := 0; i < len(e.Value); i++ {
		if !isValueChar(e.Value[i]) {
			return "invalid header value"
		}
	}
	for _, p := range protectedHeaders {
		if strings.EqualFold(e.Name, p) {
			return "protected header"
		}
	}
	return ""
}

// outField is one field line of a rewritten head: an original field
// (index into head.fields) or a synthetic line.
type outField struct {
	orig        int // -1 when synthetic
	name, value string
}

// rewrite is the field list of a head being edited.
type rewrite struct {
	h      *head
	fields []outField
}

func newRewrite(h *head) *rewrite {
	rw := &rewrite{h: h, fields: make([]outField, len(h.fields))}
	for i := range h.fields {
		rw.fields[i] = outField{orig: i}
	}
	return rw
}

func (rw *rewrite) is(o outField, name string) bool {
	if o.orig < 0 {
		return strings.EqualFold(o.name, name)
	}
	n := rw.h.name(rw.h.fields[o.orig])
	return len(n) == len(name) && bytes.EqualFold(n, []byte(name))
}

func (rw *rewrite) del(name string) {
	out := rw.fields[:0]
	for _, o := range rw.fields {
		if !rw.is(o, name) {
			out = append(out, o)
		}
	}
	rw.fields = out
}

func (rw *rewrite) apply(e l7.HeaderEdit) {
	switch e.Action {
	case l7.HeaderAdd:
		rw.fields = append(rw.fields, outField{orig: -1, name: e.Name, value: e.Value})
	case l7.HeaderDelete:
		rw.del(e.Name)
	case l7.HeaderReplace:
		// Replace the first line in place, drop the others; add the
		// field when it was missing (Cilium's REPLACE sets the header).
		for i, o := range rw.fields {
			if rw.is(o, e.Name) {
				rw.fields[i] = outField{orig: -1, name: e.Name, value: e.Value}
				rest := rw.fields[i+1:]
				rw.fields = rw.fields[:i+1]
				for _, o := range rest {
					if !rw.is(o, e.Name) {
						rw.fields = append(rw.fields, o)
					}
				}
				return
			}
		}
		rw.fields = append(rw.fields, outField{orig: -1, name: e.Name, value: e.Value})
	}
}

// setList replaces every field named name by one line holding the list
// elements keep returns true for, or removes them when none is kept.
func (rw *rewrite) setList(name string, keep func(e []byte) bool) {
	var kept []string
	pos := -1
	out := rw.fields[:0]
	for _, o := range rw.fields {
		if !rw.is(o, name) {
			out = append(out, o)
			continue
		}
		if pos < 0 {
			pos = len(out)
		}
		var v []byte
		if o.orig < 0 {
			v = []byte(o.value)
		} else {
			v = rw.h.value(rw.h.fields[o.orig])
		}
		forEachElement(v, func(e []byte) {
			if keep(e) {
				kept = append(kept, string(e))
			}
		})
	}
	rw.fields = out
	if pos >= 0 && len(kept) > 0 {
		rw.fields = append(rw.fields[:pos], append([]outField{{orig: -1, name: name, value: strings.Join(kept, ", ")}}, rw.fields[pos:]...)...)
	}
}

// writeTo writes the rewritten head.
func (rw *rewrite) writeTo(w io.Writer) error {
	var b bytes.Buffer
	b.Grow(len(rw.h.buf) + 64)
	b.Write(rw.h.startLine())
	b.WriteString("\r\n")
	for _, o := range rw.fields {
		if o.orig >= 0 {
			b.Write(rw.h.line(rw.h.fields[o.orig]))
		} else {
			fmt.Fprintf(&b, "%s: %s", o.name, o.value)
		}
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	_, err := w.Write(b.Bytes())
	return err
}

// stripH2CUpgrade removes an offer to upgrade to h2c (RFC 7540 §3.2) from
// r: HTTP/2 after such an upgrade would reach the backend as an opaque
// tunnel, past every rule. A server may ignore an Upgrade offer (RFC 9110
// §7.8), so the request then simply continues over HTTP/1.1, inspected.
// It reports whether r still asks for another protocol.
func stripH2CUpgrade(rw *rewrite) (stillUpgrade bool) {
	isH2C := func(e []byte) bool { return bytes.EqualFold(e, []byte("h2c")) }
	rw.setList("upgrade", func(e []byte) bool {
		if isH2C(e) {
			return false
		}
		stillUpgrade = true
		return true
	})
	rw.del("http2-settings")
	rw.setList("connection", func(e []byte) bool {
		return !bytes.EqualFold(e, []byte("http2-settings")) && (stillUpgrade || !bytes.EqualFold(e, []byte("upgrade")))
	})
	return stillUpgrade
}

// offersH2C reports whether r's Upgrade header lists h2c.
func offersH2C(h *head) bool {
	for _, f := range h.fields {
		if h.nameIs(f, "upgrade") && hasToken(h.value(f), "h2c") {
			return true
		}
	}
	return false
}
