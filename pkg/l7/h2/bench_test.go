package h2

import (
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

func benchH2(b *testing.B, serve l7.ServeFunc, parallel bool) {
	l7test.BenchGET(b, serve, newJudge("/deny"), h2cProtocols(), h2cClient(nil), parallel)
}

// BenchmarkH2Inspect is one GET (1 KiB response) on a kept h2c connection
// through the HTTP/2 inspector, client and server included.
func BenchmarkH2Inspect(b *testing.B) { benchH2(b, Serve, false) }

// BenchmarkH2Raw is the same through a plain byte relay.
func BenchmarkH2Raw(b *testing.B) { benchH2(b, l7test.RawRelay, false) }

// BenchmarkH2InspectParallel multiplexes concurrent requests on the
// connection.
func BenchmarkH2InspectParallel(b *testing.B) { benchH2(b, Serve, true) }

// BenchmarkH2RawParallel is the same through a plain byte relay.
func BenchmarkH2RawParallel(b *testing.B) { benchH2(b, l7test.RawRelay, true) }
