package http1

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/palisade-net/palisade/pkg/l7"
)

// denyReply is the proxy's answer to a denied request: 403 with the fixed
// body Cilium's Envoy answers with. A response to HEAD carries no body.
func denyReply(head, closeConn bool) string {
	var b strings.Builder
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(l7.DeniedStatus))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(l7.DeniedStatus))
	b.WriteString("\r\nContent-Type: ")
	b.WriteString(l7.DeniedContentType)
	b.WriteString("\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(l7.DeniedBody)))
	if closeConn {
		b.WriteString("\r\nConnection: close")
	}
	b.WriteString("\r\n\r\n")
	if !head {
		b.WriteString(l7.DeniedBody)
	}
	return b.String()
}

// errorReply is a response the proxy answers with when the exchange
// cannot go on (400 for a malformed request, 502 for a malformed or
// missing response); the connection closes after it. The body says why.
func errorReply(status int, reason string) string {
	body := http.StatusText(status) + ": " + reason + "\r\n"
	return "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) +
		"\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) +
		"\r\nConnection: close\r\n\r\n" + body
}
