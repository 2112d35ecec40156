package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// tcpPair returns two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// brokerHandler answers one request; nil means no response (acks=0).
type brokerHandler func(req kmsg.Request) kmsg.Response

// fakeBroker is a scripted broker on one connection.
type fakeBroker struct {
	mu       sync.Mutex
	received []kmsg.Request
	sent     [][]byte
	delay    time.Duration
}

func (b *fakeBroker) requests() []kmsg.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]kmsg.Request(nil), b.received...)
}

// serve reads requests from conn and answers them with handle.
func (b *fakeBroker) serve(conn net.Conn, handle brokerHandler) {
	var buf []byte
	for {
		full, err := readFrame(conn, buf, minRequestSize, maxRequestSize)
		if err != nil {
			return
		}
		key, version, corr := headerPrefix(full[4:])
		req := kmsg.RequestForKey(key)
		if req == nil {
			return
		}
		req.SetVersion(version)
		if _, err := decodeRequest(full[4:], req); err != nil {
			return
		}
		b.mu.Lock()
		b.received = append(b.received, req)
		b.mu.Unlock()
		resp := handle(req)
		if resp == nil {
			continue
		}
		if b.delay > 0 {
			time.Sleep(b.delay)
		}
		frame := appendResponse(nil, corr, resp)
		b.mu.Lock()
		b.sent = append(b.sent, frame)
		b.mu.Unlock()
		if _, err := conn.Write(frame); err != nil {
			return
		}
	}
}

// defaultHandler answers like a tiny broker: every response marked with
// ThrottleMillis 7 where it has one, Produce acks=0 unanswered.
func defaultHandler(req kmsg.Request) kmsg.Response {
	if p, ok := req.(*kmsg.ProduceRequest); ok && p.Acks == 0 {
		return nil
	}
	resp := req.ResponseKind()
	if tr, ok := resp.(kmsg.SetThrottleResponse); ok {
		tr.SetThrottle(7)
	}
	switch r := resp.(type) {
	case *kmsg.MetadataResponse:
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port = 1, "broker-1", 9092
		r.Brokers = []kmsg.MetadataResponseBroker{b}
		r.ClusterID = kmsg.StringPtr("cluster-x")
		r.ControllerID = 1
		for _, rt := range req.(*kmsg.MetadataRequest).Topics {
			st := kmsg.NewMetadataResponseTopic()
			st.Topic = rt.Topic
			if rt.Topic != nil {
				st.TopicID = idFor(*rt.Topic)
			}
			r.Topics = append(r.Topics, st)
		}
	case *kmsg.ApiVersionsResponse:
		for k := int16(0); k < 95; k++ {
			if rq := kmsg.RequestForKey(k); rq != nil {
				ak := kmsg.NewApiVersionsResponseApiKey()
				ak.ApiKey, ak.MaxVersion = k, rq.MaxVersion()
				r.ApiKeys = append(r.ApiKeys, ak)
			}
		}
	case *kmsg.FetchResponse:
		r.SessionID = 77
	}
	return resp
}

// idFor is the topic id the fake broker gives a topic.
func idFor(topic string) [16]byte {
	var id [16]byte
	copy(id[:], "id:"+topic)
	return id
}

// harness runs Serve between a test client and a fake broker.
type harness struct {
	t      *testing.T
	client net.Conn
	broker *fakeBroker
	judge  *stubJudge
	rec    *recorder
	done   chan error
	cancel context.CancelFunc
	corr   int32
}

func startServe(t *testing.T, handle brokerHandler) *harness {
	t.Helper()
	judge := &stubJudge{}
	broker := &fakeBroker{}
	h := startServeWith(t, judge, func(c net.Conn) { broker.serve(c, handle) })
	h.judge, h.broker = judge, broker
	return h
}

// startServeWith runs Serve with judge, the broker side of the backend
// connection handed to brokerSide.
func startServeWith(t *testing.T, judge l7.Judge, brokerSide func(net.Conn)) *harness {
	t.Helper()
	h := &harness{t: t, broker: &fakeBroker{}, rec: &recorder{}, done: make(chan error, 1)}
	client, proxyClient := tcpPair(t)
	proxyBackend, brokerConn := tcpPair(t)
	h.client = client
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	t.Cleanup(cancel)
	sess, done := h.rec.session(judge), h.done
	go brokerSide(brokerConn)
	go func() { done <- Serve(ctx, proxyClient, proxyBackend, sess) }()
	return h
}

// send writes requests (one write for all, so they arrive pipelined) and
// returns their correlation ids.
func (h *harness) send(reqs ...kmsg.Request) []int32 {
	h.t.Helper()
	var buf []byte
	var corrs []int32
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("test-client"))
	for _, r := range reqs {
		h.corr++
		corrs = append(corrs, h.corr)
		buf = append(buf, f.AppendRequest(nil, r, h.corr)...) // it sizes from dst[0]
	}
	if _, err := h.client.Write(buf); err != nil {
		h.t.Fatal(err)
	}
	return corrs
}

// read reads one response for a request of key and version and decodes it.
func (h *harness) read(key, version int16) (int32, kmsg.Response) {
	h.t.Helper()
	h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	full, err := readFrame(h.client, nil, 4, 1<<30)
	if err != nil {
		var serveErr error
		select {
		case serveErr = <-h.done:
		case <-time.After(time.Second):
		}
		_, logs := h.rec.snapshot()
		h.t.Fatalf("reading a response: %v (Serve: %v; log: %s)", err, serveErr, logs)
	}
	corr := int32(binary.BigEndian.Uint32(full[4:]))
	req := kmsg.RequestForKey(key)
	req.SetVersion(version)
	body, ok := responseBody(full[4:], responseHeaderFlexible(key, req.IsFlexible()))
	if !ok {
		h.t.Fatal("bad response header")
	}
	resp := kmsg.ResponseForKey(key)
	resp.SetVersion(version)
	if err := resp.ReadFrom(body); err != nil {
		h.t.Fatalf("decoding %s v%d response: %v", kmsg.NameForKey(key), version, err)
	}
	return corr, resp
}

// wait returns Serve's result.
func (h *harness) wait() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		return err
	case <-time.After(5 * time.Second):
		h.t.Fatal("Serve did not return")
		return nil
	}
}

func produce(version int16, acks int16, topics ...string) *kmsg.ProduceRequest {
	r := kmsg.NewPtrProduceRequest()
	r.Version, r.Acks, r.TimeoutMillis = version, acks, 1000
	for _, tp := range topics {
		pt := kmsg.NewProduceRequestTopic()
		pt.Topic = tp
		pp := kmsg.NewProduceRequestTopicPartition()
		pp.Partition, pp.Records = 0, []byte("not really a batch")
		pt.Partitions = append(pt.Partitions, pp)
		r.Topics = append(r.Topics, pt)
	}
	return r
}

func metadata(version int16, topics ...string) *kmsg.MetadataRequest {
	r := kmsg.NewPtrMetadataRequest()
	r.Version = version
	r.Topics = []kmsg.MetadataRequestTopic{}
	for _, tp := range topics {
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(tp)
		r.Topics = append(r.Topics, mt)
	}
	return r
}

func fetch(version int16, session, epoch int32, topics ...string) *kmsg.FetchRequest {
	r := kmsg.NewPtrFetchRequest()
	r.Version, r.SessionID, r.SessionEpoch = version, session, epoch
	for _, tp := range topics {
		ft := kmsg.NewFetchRequestTopic()
		ft.Topic = tp
		fp := kmsg.NewFetchRequestTopicPartition()
		fp.Partition = 3
		ft.Partitions = append(ft.Partitions, fp)
		r.Topics = append(r.Topics, ft)
	}
	return r
}

// TestServePipelined: a pipelined burst of allowed, denied and acks=0
// requests is answered in order, denials never reach the broker, and
// every request is recorded once.
func TestServePipelined(t *testing.T) {
	h := startServe(t, defaultHandler)
	h.broker.delay = 20 * time.Millisecond // denials must wait for earlier responses
	listOffsets := kmsg.NewPtrListOffsetsRequest()
	listOffsets.Version = 7
	lt := kmsg.NewListOffsetsRequestTopic()
	lt.Topic = "secret-ledger"
	lt.Partitions = []kmsg.ListOffsetsRequestTopicPartition{kmsg.NewListOffsetsRequestTopicPartition()}
	listOffsets.Topics = append(listOffsets.Topics, lt)
	apiVersions := kmsg.NewPtrApiVersionsRequest()
	apiVersions.Version = 3

	corrs := h.send(
		metadata(12, "orders"),        // allowed
		produce(9, -1, "secret-x"),    // denied
		produce(9, -1, "orders"),      // allowed
		listOffsets,                   // denied
		produce(9, 0, "orders"),       // allowed, no response
		produce(9, 0, "secret-x"),     // denied, no response
		produce(3, 1, "orders", "ok"), // allowed, old version
		apiVersions,                   // allowed
	)
	type want struct {
		key, version int16
		corr         int32
		denied       bool
	}
	for _, w := range []want{
		{3, 12, corrs[0], false}, {0, 9, corrs[1], true}, {0, 9, corrs[2], false},
		{2, 7, corrs[3], true}, {0, 3, corrs[6], false}, {18, 3, corrs[7], false},
	} {
		corr, resp := h.read(w.key, w.version)
		if corr != w.corr {
			t.Fatalf("got correlation id %d, want %d (%s)", corr, w.corr, kmsg.NameForKey(w.key))
		}
		tr, _ := resp.(kmsg.ThrottleResponse)
		if w.denied {
			if ms, _ := tr.Throttle(); ms == 7 {
				t.Fatalf("%d: denial came from the broker", corr)
			}
			switch r := resp.(type) {
			case *kmsg.ProduceResponse:
				if len(r.Topics) != 1 || r.Topics[0].Partitions[0].ErrorCode != codeTopicAuth || r.Topics[0].Topic != "secret-x" {
					t.Fatalf("produce denial %+v", r)
				}
				if m := r.Topics[0].Partitions[0].ErrorMessage; m == nil || !strings.Contains(*m, `topic "secret-x" is not covered`) {
					t.Fatalf("produce denial message %v", m)
				}
			case *kmsg.ListOffsetsResponse:
				if r.Topics[0].Partitions[0].ErrorCode != codeTopicAuth || r.Topics[0].Partitions[0].Offset != -1 {
					t.Fatalf("list offsets denial %+v", r)
				}
			}
		} else if ms, _ := tr.Throttle(); ms != 7 {
			t.Fatalf("%d: allowed response did not come from the broker", corr)
		}
	}

	// The broker saw exactly the allowed requests, in order.
	waitFor(t, func() bool { return len(h.broker.requests()) == 5 })
	var seen []string
	for _, r := range h.broker.requests() {
		seen = append(seen, kmsg.NameForKey(r.Key()))
		if p, ok := r.(*kmsg.ProduceRequest); ok {
			for _, tp := range p.Topics {
				if strings.HasPrefix(tp.Topic, "secret") {
					t.Fatalf("denied produce reached the broker")
				}
			}
		}
	}
	if want := []string{"Metadata", "Produce", "Produce", "Produce", "ApiVersions"}; !slices.Equal(seen, want) {
		t.Fatalf("broker saw %v, want %v", seen, want)
	}

	h.client.Close()
	if err := h.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	recs, _ := h.rec.snapshot()
	if len(recs) != 8 {
		t.Fatalf("%d records, want 8", len(recs))
	}
	denied := 0
	for _, r := range recs {
		if r.Protocol != "kafka" || r.Kafka == nil {
			t.Fatalf("record %+v", r)
		}
		if !r.Verdict.Allow {
			denied++
			if r.Kafka.ErrorCode != codeTopicAuth || r.Verdict.Reason == "" {
				t.Fatalf("denial record %+v %+v", r.Kafka, r.Verdict)
			}
		} else if r.Kafka.ErrorCode != 0 {
			t.Fatalf("allowed record with error code %+v", r.Kafka)
		}
		if r.Kafka.ClientID != "test-client" || r.Kafka.API != kmsg.NameForKey(r.Kafka.APIKey) {
			t.Fatalf("record %+v", r.Kafka)
		}
	}
	if denied != 3 {
		t.Fatalf("%d denial records, want 3", denied)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestServeMetadataDenial: a denied Metadata request is answered with
// the brokers of a brokers-only probe; the broker never sees the denied
// topics.
func TestServeMetadataDenial(t *testing.T) {
	for _, version := range []int16{0, 1, 4, 9, 12, 13} {
		h := startServe(t, defaultHandler)
		corr := h.send(metadata(version, "orders", "secret-plans"))[0]
		got, resp := h.read(3, version)
		if got != corr {
			t.Fatalf("v%d: correlation id %d, want %d", version, got, corr)
		}
		m := resp.(*kmsg.MetadataResponse)
		if len(m.Brokers) != 1 || m.Brokers[0].Host != "broker-1" {
			t.Fatalf("v%d: brokers %+v", version, m.Brokers)
		}
		if len(m.Topics) != 2 {
			t.Fatalf("v%d: %d topics", version, len(m.Topics))
		}
		for _, tp := range m.Topics {
			if tp.ErrorCode != codeTopicAuth {
				t.Fatalf("v%d: topic %v error %d", version, tp.Topic, tp.ErrorCode)
			}
		}
		reqs := h.broker.requests()
		if len(reqs) != 1 {
			t.Fatalf("v%d: broker saw %d requests", version, len(reqs))
		}
		probe := reqs[0].(*kmsg.MetadataRequest)
		if probe.Topics == nil || len(probe.Topics) != 0 || probe.Version != max(version, 1) {
			t.Fatalf("v%d: probe %+v", version, probe)
		}
	}
}

// TestServeApiVersionsCap: the broker's advertised versions for requests
// that name topics only by id are lowered to the last version with names.
func TestServeApiVersionsCap(t *testing.T) {
	handler := func(req kmsg.Request) kmsg.Response {
		r := req.ResponseKind().(*kmsg.ApiVersionsResponse)
		add := func(key, lo, hi int16) {
			k := kmsg.NewApiVersionsResponseApiKey()
			k.ApiKey, k.MinVersion, k.MaxVersion = key, lo, hi
			r.ApiKeys = append(r.ApiKeys, k)
		}
		add(0, 3, 13) // Produce: capped to 12
		add(1, 4, 18) // Fetch: capped to 12
		add(3, 0, 13) // Metadata: untouched
		add(8, 2, 10) // OffsetCommit: capped to 9
		add(9, 1, 9)  // OffsetFetch: already fine
		add(28, 6, 6) // TxnOffsetCommit: no version with names, untouched
		add(18, 0, 4) // ApiVersions
		r.ThrottleMillis = 7
		return r
	}
	for _, version := range []int16{0, 2, 3, 4} {
		h := startServe(t, handler)
		av := kmsg.NewPtrApiVersionsRequest()
		av.Version = version
		av.ClientSoftwareName, av.ClientSoftwareVersion = "test", "1"
		h.send(av)
		_, resp := h.read(18, version)
		got := map[int16][2]int16{}
		for _, k := range resp.(*kmsg.ApiVersionsResponse).ApiKeys {
			got[k.ApiKey] = [2]int16{k.MinVersion, k.MaxVersion}
		}
		want := map[int16][2]int16{0: {3, 12}, 1: {4, 12}, 3: {0, 13}, 8: {2, 9}, 9: {1, 9}, 28: {6, 6}, 18: {0, 4}}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("v%d: key %d versions %v, want %v", version, k, got[k], v)
			}
		}
	}
}

// TestServeApiVersionsTooNew: an ApiVersions request newer than kmsg is
// answered as a broker would, and the retry goes through.
func TestServeApiVersionsTooNew(t *testing.T) {
	h := startServe(t, defaultHandler)
	f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("future-client"))
	av := kmsg.NewPtrApiVersionsRequest()
	av.Version = 3
	frame := f.AppendRequest(nil, av, 41)
	binary.BigEndian.PutUint16(frame[6:], 99) // claim v99
	frame = append(frame, 0xde, 0xad)         // a body kmsg could not read
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	if _, err := h.client.Write(frame); err != nil {
		t.Fatal(err)
	}
	corr, resp := h.read(18, 0)
	r := resp.(*kmsg.ApiVersionsResponse)
	if corr != 41 || r.ErrorCode != codeUnsupportedVersion || len(r.ApiKeys) != 1 || r.ApiKeys[0].ApiKey != 18 ||
		r.ApiKeys[0].MaxVersion != kmsg.NewPtrApiVersionsRequest().MaxVersion() {
		t.Fatalf("negotiation answer %d %+v", corr, r)
	}
	if n := len(h.broker.requests()); n != 0 {
		t.Fatalf("broker saw %d requests", n)
	}
	h.send(av)
	if _, resp := h.read(18, 3); resp.(*kmsg.ApiVersionsResponse).ThrottleMillis != 7 {
		t.Fatal("retry not relayed")
	}
}

// TestServeTopicIDs: ids learnt from a Metadata response name the topics
// of a Fetch v13; unknown ids fail closed.
func TestServeTopicIDs(t *testing.T) {
	h := startServe(t, defaultHandler)
	h.send(metadata(12, "orders"))
	h.read(3, 12)

	byID := func(id [16]byte) *kmsg.FetchRequest {
		r := fetch(13, 0, 0)
		ft := kmsg.NewFetchRequestTopic()
		ft.TopicID = id
		ft.Partitions = []kmsg.FetchRequestTopicPartition{kmsg.NewFetchRequestTopicPartition()}
		r.Topics = append(r.Topics, ft)
		return r
	}
	h.send(byID(idFor("orders")))
	if _, resp := h.read(1, 13); resp.(*kmsg.FetchResponse).ThrottleMillis != 7 {
		t.Fatal("fetch by a known id was not relayed")
	}
	unknown := idFor("never-seen")
	h.send(byID(unknown))
	_, resp := h.read(1, 13)
	fr := resp.(*kmsg.FetchResponse)
	if fr.ThrottleMillis == 7 || len(fr.Topics) != 1 || fr.Topics[0].TopicID != unknown || fr.Topics[0].Partitions[0].ErrorCode != codeTopicAuth {
		t.Fatalf("fetch by an unknown id: %+v", fr)
	}
	asked := h.judge.requests()
	if got := asked[len(asked)-2].Topics; !slices.Equal(got, []string{"orders"}) {
		t.Fatalf("judge saw %q for a known id", got)
	}
	if got := asked[len(asked)-1].Topics; !slices.Equal(got, []string{""}) {
		t.Fatalf("judge saw %q for an unknown id", got)
	}
}

// switchJudge allows everything until deny is set, then denies topics in
// it: a policy change on a live connection.
type switchJudge struct {
	stubJudge
	mu   sync.Mutex
	deny map[string]bool
}

func (j *switchJudge) Kafka(r *l7.KafkaRequest) l7.Verdict {
	j.stubJudge.Kafka(r)
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, tp := range r.Topics {
		if j.deny[tp] || tp == "" {
			return l7.Verdict{Reason: "topic " + tp + " withdrawn"}
		}
	}
	return l7.Verdict{Allow: true}
}

// TestServeFetchSessionPolicyChange: an incremental fetch that names no
// partitions is judged on its session's topics, so withdrawing a topic
// stops a live session; the denial ends the session.
func TestServeFetchSessionPolicyChange(t *testing.T) {
	j := &switchJudge{deny: map[string]bool{}}
	broker := &fakeBroker{}
	h := startServeWith(t, j, func(c net.Conn) { broker.serve(c, defaultHandler) })
	h.broker = broker

	h.send(fetch(12, 0, 0, "orders")) // full fetch: the broker answers session 77
	h.read(1, 12)
	h.send(fetch(12, 77, 1)) // incremental, no partitions
	if _, resp := h.read(1, 12); resp.(*kmsg.FetchResponse).ThrottleMillis != 7 {
		t.Fatal("incremental fetch not relayed")
	}
	asked := j.requests()
	if got := asked[len(asked)-1].Topics; !slices.Equal(got, []string{"orders"}) {
		t.Fatalf("incremental fetch judged on %q", got)
	}

	j.mu.Lock()
	j.deny["orders"] = true
	j.mu.Unlock()
	before := len(h.broker.requests())
	h.send(fetch(12, 77, 2))
	_, resp := h.read(1, 12)
	fr := resp.(*kmsg.FetchResponse)
	if fr.ThrottleMillis == 7 || fr.SessionID != 0 || fr.ErrorCode != 0 || len(fr.Topics) != 1 ||
		fr.Topics[0].Topic != "orders" || fr.Topics[0].Partitions[0].Partition != 3 || fr.Topics[0].Partitions[0].ErrorCode != codeTopicAuth {
		t.Fatalf("denied incremental fetch: %+v", fr)
	}
	if len(h.broker.requests()) != before {
		t.Fatal("denied fetch reached the broker")
	}
	h.client.Close()
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
}

// TestServeLargeResponseStreamed: a response larger than the buffered
// limit is relayed byte for byte.
func TestServeLargeResponseStreamed(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 128<<10) // 2 MiB
	handler := func(req kmsg.Request) kmsg.Response {
		r := defaultHandler(req).(*kmsg.FetchResponse)
		st := kmsg.NewFetchResponseTopic()
		st.Topic = "orders"
		sp := kmsg.NewFetchResponseTopicPartition()
		sp.RecordBatches = big
		st.Partitions = append(st.Partitions, sp)
		r.Topics = append(r.Topics, st)
		return r
	}
	h := startServe(t, handler)
	h.send(fetch(12, 0, 0, "orders"))
	h.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	full, err := readFrame(h.client, nil, 4, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { h.broker.mu.Lock(); defer h.broker.mu.Unlock(); return len(h.broker.sent) == 1 })
	if !bytes.Equal(full, h.broker.sent[0]) {
		t.Fatal("streamed response differs from what the broker sent")
	}
	// The session was learnt from the peeked header.
	h.send(fetch(12, 77, 1))
	h.read(1, 12)
	if got := h.judge.requests()[1].Topics; !slices.Equal(got, []string{"orders"}) {
		t.Fatalf("session topics %q", got)
	}
}

// TestServeMalformed: bad client input closes that connection only, with
// a logged reason; the broker sees nothing of it and the next connection
// works.
func TestServeMalformed(t *testing.T) {
	frame := func(body []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	}
	header := func(key, version int16, rest ...byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(key))
		b = binary.BigEndian.AppendUint16(b, uint16(version))
		b = binary.BigEndian.AppendUint32(b, 9)
		return append(b, rest...)
	}
	produceV9 := kmsg.NewRequestFormatter().AppendRequest(nil, produce(9, -1, "orders"), 9)
	saslV0 := kmsg.NewPtrSASLHandshakeRequest()
	saslV0.Mechanism = "PLAIN"
	tests := []struct {
		name  string
		input []byte
		want  error
		log   string
	}{
		{"size below a header", frame([]byte{0, 1, 0, 0}), ErrMalformed, "frame size 4"},
		{"negative size", []byte{0xff, 0xff, 0xff, 0xf0, 1, 2}, ErrMalformed, "frame size -16"},
		{"size above 100 MiB", []byte{0x06, 0x40, 0x00, 0x01}, ErrMalformed, "frame size 104857601"},
		{"stream ends inside a frame", append([]byte{0, 0, 0, 100}, header(18, 0)...), ErrMalformed, "stream ended inside"},
		{"stream ends inside a size", []byte{0, 0}, ErrMalformed, "inside a size prefix"},
		{"unknown api key", frame(header(999, 0, 0xff, 0xff)), ErrUnsupported, "api key 999 is unknown"},
		{"negative api key", frame(header(-3, 0, 0xff, 0xff)), ErrUnsupported, "api key -3"},
		{"version too new", frame(header(0, 99, 0xff, 0xff)), ErrUnsupported, "Produce v99"},
		{"negative version", frame(header(3, -1, 0xff, 0xff)), ErrUnsupported, "Metadata v-1"},
		{"truncated client id", frame(header(18, 0, 0, 9, 'a')), ErrMalformed, "truncated request header"},
		{"truncated body", frame(produceV9[4 : len(produceV9)-3]), ErrMalformed, "Produce v9"},
		{"huge tag count", frame(header(18, 3, 0xff, 0xff, 0, 2, 'a', 2, 'b', 0xff, 0xff, 0xff, 0xff, 0x0f)), ErrMalformed, "ApiVersions v3"},
		{"bad header tags", frame(header(18, 3, 0xff, 0xff, 5, 1)), ErrMalformed, "truncated request header"},
		{"sasl handshake v0", kmsg.NewRequestFormatter().AppendRequest(nil, saslV0, 3), ErrUnsupported, "raw SASL"},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ErrMalformed, "frame size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startServe(t, defaultHandler)
			start := time.Now()
			if _, err := h.client.Write(tt.input); err != nil {
				t.Fatal(err)
			}
			if tt.name == "stream ends inside a frame" || tt.name == "stream ends inside a size" {
				h.client.(*net.TCPConn).CloseWrite()
			}
			err := h.wait()
			if !errors.Is(err, tt.want) {
				t.Fatalf("Serve = %v, want %v", err, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v", d)
			}
			_, logs := h.rec.snapshot()
			if !strings.Contains(logs, "kafka: connection closed") || !strings.Contains(logs, tt.log) {
				t.Fatalf("log %q lacks %q", logs, tt.log)
			}
			if n := len(h.broker.requests()); n != 0 {
				t.Fatalf("broker saw %d requests", n)
			}
			// The client's connection is closed.
			h.client.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := h.client.Read(make([]byte, 1)); err == nil {
				t.Fatal("client connection still open")
			}
			// The next connection works.
			next := startServe(t, defaultHandler)
			next.send(metadata(12, "orders"))
			next.read(3, 12)
		})
	}
}

// TestServeBackendViolations: a broker that answers out of order or
// unasked ends the connection with ErrBackend.
func TestServeBackendViolations(t *testing.T) {
	t.Run("wrong correlation id", func(t *testing.T) {
		h := startServeWith(t, &stubJudge{}, func(conn net.Conn) {
			readFrame(conn, nil, 8, maxRequestSize)
			conn.Write(appendResponse(nil, 12345, kmsg.NewPtrMetadataResponse()))
		})
		h.send(metadata(1, "orders"))
		if err := h.wait(); !errors.Is(err, ErrBackend) {
			t.Fatalf("Serve = %v", err)
		}
	})
	t.Run("unsolicited response", func(t *testing.T) {
		h := startServeWith(t, &stubJudge{}, func(conn net.Conn) {
			conn.Write(appendResponse(nil, 1, kmsg.NewPtrMetadataResponse()))
		})
		if err := h.wait(); !errors.Is(err, ErrBackend) {
			t.Fatalf("Serve = %v", err)
		}
	})
}

// TestServeEnds: clean ends from either side return nil; a cancelled
// context returns its error promptly.
func TestServeEnds(t *testing.T) {
	t.Run("client closes", func(t *testing.T) {
		h := startServe(t, defaultHandler)
		h.send(metadata(12, "orders"))
		h.read(3, 12)
		h.client.Close()
		if err := h.wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("broker closes between responses", func(t *testing.T) {
		h := startServeWith(t, &stubJudge{}, func(conn net.Conn) { conn.Close() })
		if err := h.wait(); err != nil {
			t.Fatal(err)
		}
		h.client.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := h.client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("client read %v, want EOF", err)
		}
	})
	t.Run("broker closes with a request unanswered", func(t *testing.T) {
		h := startServeWith(t, &stubJudge{}, func(conn net.Conn) {
			readFrame(conn, nil, 8, maxRequestSize)
			conn.Close()
		})
		h.send(metadata(12, "orders"))
		if err := h.wait(); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Serve = %v", err)
		}
	})
	t.Run("context cancelled", func(t *testing.T) {
		h := startServe(t, defaultHandler)
		h.send(metadata(12, "orders"))
		h.read(3, 12)
		start := time.Now()
		h.cancel()
		err := h.wait()
		if !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
			t.Fatalf("Serve = %v after %v", err, time.Since(start))
		}
	})
}

// TestServeBackpressure: with a broker that never answers, the inspector
// forwards at most twice the queue depth and then stops reading the
// client, instead of queueing without bound.
func TestServeBackpressure(t *testing.T) {
	var mu sync.Mutex
	received := 0
	h := startServeWith(t, &stubJudge{}, func(conn net.Conn) {
		for {
			if _, err := readFrame(conn, nil, minRequestSize, maxRequestSize); err != nil {
				return
			}
			mu.Lock()
			received++
			mu.Unlock()
		}
	})
	const sent = 4 * queueDepth
	go func() {
		f := kmsg.NewRequestFormatter()
		for i := range sent {
			if _, err := h.client.Write(f.AppendRequest(nil, metadata(12, "orders"), int32(i))); err != nil {
				return
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return received }
	waitFor(t, func() bool { return count() >= 2*queueDepth })
	time.Sleep(200 * time.Millisecond)
	if n := count(); n > 2*queueDepth+1 {
		t.Fatalf("forwarded %d unanswered requests; the bound is %d", n, 2*queueDepth+1)
	}
	h.cancel()
	h.wait()
}
