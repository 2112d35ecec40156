package l7test

import (
	"io"
	"net/http"
	"strings"
	"sync"
)

// Request is a request as a Backend received it.
type Request struct {
	// Path is the request URI.
	Method, Path string
	Header       http.Header
	Body         string
	Trailer      http.Header
}

// Backend is an http.Handler that reads each request's body, records the
// request, sets the response header X-Path to its URI and leaves the
// answer to Respond. A request whose body cannot be read gets a 400 and
// is not recorded.
type Backend struct {
	// Respond answers r, whose body was read into body.
	Respond func(w http.ResponseWriter, r *http.Request, body []byte)

	mu   sync.Mutex
	seen []Request
}

// ServeHTTP records r and has Respond answer it.
func (b *Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.seen = append(b.seen, Request{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: string(body), Trailer: r.Trailer.Clone()})
	b.mu.Unlock()
	w.Header().Set("X-Path", r.URL.RequestURI())
	b.Respond(w, r, body)
}

// Requests returns the requests received so far.
func (b *Backend) Requests() []Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Request(nil), b.seen...)
}

// SawPrefix reports whether a request whose URI starts with prefix was
// received.
func (b *Backend) SawPrefix(prefix string) bool {
	for _, r := range b.Requests() {
		if strings.HasPrefix(r.Path, prefix) {
			return true
		}
	}
	return false
}
