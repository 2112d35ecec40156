package kafka

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzKafka from fuzzSeeds")

// fuzzSeeds are the checked-in seed inputs: pipelined valid requests of
// common keys (allowed and denied), acks=0, version negotiation, ids,
// fetch sessions, and known-bad inputs.
func fuzzSeeds() map[string][]byte {
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("fuzz"))
	frames := func(reqs ...kmsg.Request) []byte {
		var out []byte
		for i, r := range reqs {
			out = append(out, f.AppendRequest(nil, r, int32(i+1))...)
		}
		return out
	}
	av := func(v int16) kmsg.Request {
		r := kmsg.NewPtrApiVersionsRequest()
		r.Version, r.ClientSoftwareName, r.ClientSoftwareVersion = v, "fuzz", "1"
		return r
	}
	fetchByID := fetch(13, 0, 0)
	fetchByID.Topics = []kmsg.FetchRequestTopic{{TopicID: [16]byte{1}, Partitions: []kmsg.FetchRequestTopicPartition{kmsg.NewFetchRequestTopicPartition()}}}
	v99 := f.AppendRequest(nil, av(3), 7)
	binary.BigEndian.PutUint16(v99[6:], 99)
	seeds := map[string][]byte{
		"produce-allowed-denied":  frames(produce(9, -1, "orders"), produce(9, -1, "secret-a"), produce(3, 1, "orders", "secret-b")),
		"produce-acks0":           frames(produce(9, 0, "orders"), produce(9, 0, "secret-a"), metadata(12, "orders")),
		"metadata-versions":       frames(metadata(0, "orders"), metadata(1), metadata(9, "secret-x"), metadata(13, "a", "b")),
		"metadata-all":            frames(&kmsg.MetadataRequest{Version: 12}),
		"fetch-session":           frames(fetch(12, 0, 0, "orders"), fetch(12, 77, 1), fetch(12, 5, 3, "secret-a")),
		"fetch-by-id":             frames(fetchByID),
		"apiversions":             frames(av(0), av(3), av(4)),
		"apiversions-v99":         v99,
		"huge-tag-count":          {0, 0, 0, 19, 0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 0, 2, 'a', 2, 'b', 0xff, 0xff, 0xff, 0xff, 0x0f},
		"size-too-small":          {0, 0, 0, 2, 0, 0},
		"unknown-key":             {0, 0, 0, 10, 3, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff},
		"garbage":                 []byte("GET / HTTP/1.1\r\n\r\n"),
		"sasl-v0":                 frames(&kmsg.SASLHandshakeRequest{Mechanism: "PLAIN"}),
		"groups-and-transactions": frames(&kmsg.FindCoordinatorRequest{Version: 3, CoordinatorKey: "g"}, &kmsg.JoinGroupRequest{Version: 5, Group: "g", ProtocolType: "consumer"}, &kmsg.InitProducerIDRequest{Version: 4, TransactionalID: kmsg.StringPtr("tx")}),
	}
	// One filled request of every key at its highest version.
	fl := newFiller()
	var all []byte
	for k := int16(0); int(k) < len(apis); k++ {
		if r := kmsg.RequestForKey(k); r != nil {
			req, _ := fl.filledRequest(&testing.T{}, k, r.MaxVersion())
			all = append(all, f.AppendRequest(nil, req, int32(k))...)
		}
	}
	seeds["every-key"] = all
	return seeds
}

// TestFuzzCorpus keeps testdata/fuzz/FuzzKafka in step with fuzzSeeds
// (go test -run TestFuzzCorpus -update-corpus rewrites it).
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzKafka")
	for name, seed := range fuzzSeeds() {
		path := filepath.Join(dir, name)
		content := "go test fuzz v1\n[]byte(" + strconv.Quote(string(seed)) + ")\n"
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("seed %s missing (go test -run TestFuzzCorpus -update-corpus): %v", name, err)
		}
		if string(got) != content {
			t.Fatalf("seed %s is stale (go test -run TestFuzzCorpus -update-corpus)", name)
		}
	}
}

// fuzzBackend answers every forwarded request with an empty response of
// its kind (none for Produce with acks=0) and keeps the frames.
type fuzzBackend struct {
	mu     sync.Mutex
	frames [][]byte
}

func (b *fuzzBackend) serve(conn net.Conn) {
	defer conn.Close()
	for {
		full, err := readFrame(conn, nil, minRequestSize, maxRequestSize)
		if err != nil {
			return
		}
		b.mu.Lock()
		b.frames = append(b.frames, full)
		b.mu.Unlock()
		key, version, corr := headerPrefix(full[4:])
		req := kmsg.RequestForKey(key)
		if req == nil || version < 0 || version > req.MaxVersion() {
			return
		}
		req.SetVersion(version)
		if _, err := decodeRequest(full[4:], req); err != nil {
			return
		}
		if p, ok := req.(*kmsg.ProduceRequest); ok && p.Acks == 0 {
			continue
		}
		if _, err := conn.Write(appendResponse(nil, corr, req.ResponseKind())); err != nil {
			return
		}
	}
}

// judgeForwarded judges a frame the backend received with a fresh
// connection state (the fuzz backend teaches no ids and no sessions, so
// the inspector's state is as fresh): it must have been allowed.
func judgeForwarded(j l7.Judge, full []byte) error {
	key, version, _ := headerPrefix(full[4:])
	req := kmsg.RequestForKey(key)
	if req == nil {
		return fmt.Errorf("forwarded unknown key %d", key)
	}
	req.SetVersion(version)
	h, err := decodeRequest(full[4:], req)
	if err != nil {
		return fmt.Errorf("forwarded an undecodable %s v%d: %v", kmsg.NameForKey(key), version, err)
	}
	a, _ := lookupAPI(key)
	ts := topicSet{st: newConnState()}
	if a.topics != nil {
		a.topics(req, &ts)
	}
	kr := l7.KafkaRequest{APIKey: key, APIVersion: version, Topics: ts.names}
	if h.clientID != nil {
		kr.ClientID = *h.clientID
	}
	if v := j.Kafka(&kr); !v.Allow {
		return fmt.Errorf("a denied %s v%d (topics %q) reached the backend", kmsg.NameForKey(key), version, ts.names)
	}
	return nil
}

// FuzzKafka feeds arbitrary client bytes through Serve: it must neither
// panic nor hang, and no denied request may reach the backend.
//
// The seeds are testdata/fuzz/FuzzKafka (see TestFuzzCorpus).
func FuzzKafka(f *testing.F) {
	f.Fuzz(func(t *testing.T, input []byte) {
		judge := &stubJudge{denyKeys: map[int16]bool{int16(kmsg.DeleteTopics): true, int16(kmsg.CreateACLs): true}}
		client, proxyClient := memPair()
		proxyBackend, backendConn := memPair()
		defer client.Close()
		backend := &fuzzBackend{}
		go backend.serve(backendConn)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- Serve(ctx, proxyClient, proxyBackend, &l7.Session{Judge: judge}) }()

		go func() {
			client.Write(input)
			client.CloseWrite()
		}()
		go io.Copy(io.Discard, client)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Serve did not return within 10s for %d input bytes", len(input))
		}
		backendConn.Close()
		backend.mu.Lock()
		defer backend.mu.Unlock()
		for _, frame := range backend.frames {
			if err := judgeForwarded(judge, frame); err != nil {
				t.Fatal(err)
			}
		}
		// The only frames the inspector writes itself are Metadata probes:
		// every other forwarded frame is a byte-exact prefix-free slice of
		// the input.
		for _, frame := range backend.frames {
			key, _, _ := headerPrefix(frame[4:])
			if key != int16(kmsg.Metadata) && !strings.Contains(string(input), string(frame)) {
				t.Fatalf("forwarded a %s frame that is not in the input", kmsg.NameForKey(key))
			}
		}
	})
}
