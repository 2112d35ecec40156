package kafka

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// benchProduceFrame is a Produce v9 request with one 1 KiB record batch.
func benchProduceFrame() []byte {
	r := produce(9, -1, "orders")
	batch := make([]byte, 1024)
	rand.Read(batch)
	r.Topics[0].Partitions[0].Records = batch
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID("bench")).AppendRequest(nil, r, 1)
}

// benchBroker answers every request with resp, its correlation id patched.
func benchBroker(conn net.Conn, resp []byte) {
	br := bufio.NewReaderSize(conn, 64<<10)
	bw := bufio.NewWriterSize(conn, 64<<10)
	var buf []byte
	for {
		full, err := readFrame(br, buf, minRequestSize, maxRequestSize)
		if err != nil {
			return
		}
		buf = full
		copy(resp[4:8], full[8:12])
		bw.Write(resp)
		if br.Buffered() == 0 {
			if bw.Flush() != nil {
				return
			}
		}
	}
}

// rawRelay is the baseline: bytes copied both ways, nothing inspected.
func rawRelay(client, backend net.Conn) {
	go func() { io.Copy(client, backend); client.Close() }()
	io.Copy(backend, client)
	backend.Close()
}

func inspectRelay(client, backend net.Conn) {
	Serve(context.Background(), client, backend, &l7.Session{Judge: nopJudge{}})
}

// runProxyBench sends b.N Produce requests through proxy with at most
// window in flight and reads every response.
func runProxyBench(b *testing.B, proxy func(client, backend net.Conn), window int) {
	frame := benchProduceFrame()
	resp := kmsg.NewPtrProduceResponse()
	resp.Version = 9
	st := kmsg.NewProduceResponseTopic()
	st.Topic = "orders"
	st.Partitions = []kmsg.ProduceResponseTopicPartition{kmsg.NewProduceResponseTopicPartition()}
	resp.Topics = append(resp.Topics, st)
	respFrame := appendResponse(nil, 1, resp)

	client, proxyClient := tcpPair(b)
	proxyBackend, brokerConn := tcpPair(b)
	go benchBroker(brokerConn, respFrame)
	go proxy(proxyClient, proxyBackend)

	sem := make(chan struct{}, window)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			sem <- struct{}{}
			binary.BigEndian.PutUint32(frame[8:], uint32(i))
			if _, err := client.Write(frame); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReaderSize(client, 64<<10)
	var buf []byte
	for i := 0; i < b.N; i++ {
		full, err := readFrame(br, buf, 4, maxRequestSize)
		if err != nil {
			b.Fatalf("response %d: %v", i, err)
		}
		buf = full
		if got := binary.BigEndian.Uint32(full[4:]); got != uint32(i) {
			b.Fatalf("response %d has correlation id %d", i, got)
		}
		<-sem
	}
	b.StopTimer()
	client.Close()
}

// BenchmarkServe compares Produce v9 (1 KiB record) round trips through
// Serve with a raw byte relay, lock-step (window 1) and pipelined.
func BenchmarkServe(b *testing.B) {
	for _, window := range []int{1, 16} {
		w := "window=" + strconv.Itoa(window)
		b.Run("relay/"+w, func(b *testing.B) { runProxyBench(b, rawRelay, window) })
		b.Run("inspect/"+w, func(b *testing.B) { runProxyBench(b, inspectRelay, window) })
	}
}

// BenchmarkInspect is the inspection cost alone: decode a Produce v9
// frame with a 1 KiB record, collect its topics and ask the judge.
func BenchmarkInspect(b *testing.B) {
	full := benchProduceFrame()
	judge := &nopJudge{}
	st := newConnState()
	b.SetBytes(int64(len(full)))
	b.ReportAllocs()
	for b.Loop() {
		frame := full[4:]
		key, version, _ := headerPrefix(frame)
		a, _ := lookupAPI(key)
		req := kmsg.RequestForKey(key)
		req.SetVersion(version)
		h, err := decodeRequest(frame, req)
		if err != nil {
			b.Fatal(err)
		}
		ts := topicSet{st: st}
		a.topics(req, &ts)
		kr := l7.KafkaRequest{APIKey: key, APIVersion: version, ClientID: *h.clientID, Topics: ts.names}
		if !judge.Kafka(&kr).Allow {
			b.Fatal("denied")
		}
	}
}

// BenchmarkDeny is the cost of building a Produce v9 denial.
func BenchmarkDeny(b *testing.B) {
	full := benchProduceFrame()
	req := kmsg.NewPtrProduceRequest()
	req.Version = 9
	if _, err := decodeRequest(full[4:], req); err != nil {
		b.Fatal(err)
	}
	a, _ := lookupAPI(0)
	d := &denial{msg: kmsg.StringPtr("palisade: bench")}
	b.ReportAllocs()
	for b.Loop() {
		resp := req.ResponseKind()
		a.deny(req, resp, d)
		appendResponse(nil, 1, resp)
	}
}

// nopJudge allows everything without locking or recording.
type nopJudge struct{}

func (nopJudge) HTTP(*l7.HTTPRequest) l7.Verdict   { return l7.Verdict{Allow: true} }
func (nopJudge) Kafka(*l7.KafkaRequest) l7.Verdict { return l7.Verdict{Allow: true} }
