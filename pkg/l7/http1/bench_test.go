package http1

import (
	"net/http"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

func benchHTTP1(b *testing.B, serve l7.ServeFunc) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	l7test.BenchGET(b, serve, newJudge("/deny"), nil, client, false)
}

// BenchmarkHTTP1Inspect is one keep-alive GET (1 KiB response) through the
// HTTP/1.1 inspector, client and server included.
func BenchmarkHTTP1Inspect(b *testing.B) { benchHTTP1(b, Serve) }

// BenchmarkHTTP1Raw is the same through a plain byte relay.
func BenchmarkHTTP1Raw(b *testing.B) { benchHTTP1(b, l7test.RawRelay) }
