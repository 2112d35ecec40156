package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// pendingKind says how the response writer answers a queued request.
type pendingKind uint8

const (
	// relay: the request was forwarded; relay the broker's response.
	relay pendingKind = iota
	// answer: the inspector answers with the prepared frame.
	answer
	// probe: the request was denied and a brokers-only Metadata request
	// was sent in its place; build the denial from the broker's answer.
	probe
)

// pending is one request awaiting its answer to the client.
type pending struct {
	kind         pendingKind
	key, version int16
	corr         int32
	// flexibleHeader: the broker's response header has tagged fields.
	flexibleHeader bool
	// frame is the prepared answer (kind answer).
	frame []byte
	// fetch is a forwarded Fetch request, whose response updates the
	// fetch sessions.
	fetch *kmsg.FetchRequest
	// metadata is the denied Metadata request (kind probe) and
	// probeVersion the version of the probe sent for it.
	metadata     *kmsg.MetadataRequest
	probeVersion int16
	msg          *string

	start   time.Time
	rec     l7.KafkaRecord
	verdict l7.Verdict
}

// readRequests reads, judges and forwards or answers the client's
// requests until the client's stream ends (nil) or breaks the protocol.
//
// It closes the queue only after a clean end, which tells the response
// writer to finish once every answer is written; after an error the
// connection is torn down instead.
func (c *conn) readRequests() error {
	var buf []byte
	for {
		full, err := readFrame(c.fromClient, buf, minRequestSize, maxRequestSize)
		if err != nil {
			if errors.Is(err, io.EOF) {
				close(c.queue)
				return nil
			}
			return fmt.Errorf("kafka: reading a request: %w", err)
		}
		if cap(full) <= 1<<20 {
			buf = full // reuse buffers up to 1 MiB
		}
		if err := c.handle(full); err != nil {
			return err
		}
		// Batch forwarded frames while the client's next request is
		// already here; flush before waiting for more.
		if !c.frameBuffered() {
			if err := c.flushBackend(); err != nil {
				return err
			}
		}
	}
}

// frameBuffered reports whether a complete request frame is already
// buffered from the client.
func (c *conn) frameBuffered() bool {
	n := c.fromClient.Buffered()
	if n < 4 {
		return false
	}
	size, _ := c.fromClient.Peek(4)
	return n >= 4+int(int32(binary.BigEndian.Uint32(size)))
}

func (c *conn) flushBackend() error {
	if err := c.toBackend.Flush(); err != nil {
		return fmt.Errorf("kafka: forwarding requests: %w", err)
	}
	return nil
}

// handle judges one request frame (full, with its size prefix) and
// forwards it or queues its answer.
func (c *conn) handle(full []byte) error {
	start := time.Now()
	frame := full[4:]
	key, version, corr := headerPrefix(frame)
	name := kmsg.NameForKey(key)
	a, ok := lookupAPI(key)
	if !ok {
		return fmt.Errorf("kafka: request with correlation id %d: %w: api key %d is unknown", corr, ErrUnsupported, key)
	}
	req := kmsg.RequestForKey(key)
	if version < 0 || version > req.MaxVersion() {
		if key == int16(kmsg.ApiVersions) && version > req.MaxVersion() {
			return c.negotiate(corr, version, start)
		}
		return fmt.Errorf("kafka: request with correlation id %d: %w: %s v%d (known up to v%d)",
			corr, ErrUnsupported, name, version, req.MaxVersion())
	}
	req.SetVersion(version)
	h, err := decodeRequest(frame, req)
	if err != nil {
		return fmt.Errorf("kafka: request with correlation id %d: %w", corr, err)
	}

	ts := topicSet{st: c.state}
	if a.topics != nil {
		a.topics(req, &ts)
	}
	kr := l7.KafkaRequest{APIKey: key, APIVersion: version, Topics: ts.names}
	if h.clientID != nil {
		kr.ClientID = *h.clientID
	}
	verdict := c.sess.Judge.Kafka(&kr)
	p := &pending{
		key: key, version: version, corr: corr,
		flexibleHeader: responseHeaderFlexible(key, req.IsFlexible()),
		start:          start,
		verdict:        verdict,
		rec: l7.KafkaRecord{
			APIKey: key, API: name, APIVersion: version,
			ClientID: kr.ClientID, Topics: kr.Topics,
		},
	}
	produce, _ := req.(*kmsg.ProduceRequest)
	noResponse := produce != nil && produce.Acks == 0

	if verdict.Allow {
		if key == int16(kmsg.SASLHandshake) && version == 0 {
			return fmt.Errorf("kafka: request with correlation id %d: %w: SASLHandshake v0 switches the connection to raw SASL frames, which cannot be inspected",
				corr, ErrUnsupported)
		}
		if noResponse {
			if err := c.forward(full); err != nil {
				return err
			}
			c.record(p, time.Now())
			return nil
		}
		p.kind = relay
		p.fetch, _ = req.(*kmsg.FetchRequest)
		if err := c.enqueue(p); err != nil {
			return err
		}
		return c.forward(full)
	}

	d := &denial{msg: denialMessage(verdict)}
	if fr, ok := req.(*kmsg.FetchRequest); ok && fetchIsIncremental(fr) {
		d.session = c.state.endSession(fr.SessionID)
	}
	if mr, ok := req.(*kmsg.MetadataRequest); ok {
		// Answered once the broker list of a brokers-only probe is in.
		pr := metadataProbe(mr)
		p.kind, p.metadata, p.probeVersion, p.msg = probe, mr, pr.Version, d.msg
		p.rec.ErrorCode = codeTopicAuth
		if err := c.enqueue(p); err != nil {
			return err
		}
		return c.forwardRequest(pr, corr, h.clientID)
	}
	resp := req.ResponseKind()
	p.rec.ErrorCode = a.deny(req, resp, d)
	if noResponse {
		c.log.Debug("kafka: denied a Produce with acks=0; nothing to answer",
			"topics", kr.Topics, "reason", verdict.Reason)
		c.record(p, time.Now())
		return nil
	}
	p.kind = answer
	p.frame = appendResponse(nil, corr, resp)
	return c.enqueue(p)
}

// denialMessage is the ErrorMessage of a denial.
func denialMessage(v l7.Verdict) *string {
	reason := v.Reason
	if reason == "" {
		reason = "denied by policy"
	}
	return kmsg.StringPtr("palisade: " + reason)
}

// negotiate answers an ApiVersions request newer than the inspector knows
// the way a broker does, so that the client retries at a version it knows.
func (c *conn) negotiate(corr int32, version int16, start time.Time) error {
	p := &pending{
		kind: answer, key: int16(kmsg.ApiVersions), version: version, corr: corr,
		frame: negotiateDown(corr),
		start: start,
		verdict: l7.Verdict{Reason: fmt.Sprintf("ApiVersions v%d is newer than the proxy reads; answered UNSUPPORTED_VERSION so that the client retries at v%d or lower",
			version, kmsg.NewPtrApiVersionsRequest().MaxVersion())},
		rec: l7.KafkaRecord{
			APIKey: int16(kmsg.ApiVersions), API: kmsg.NameForKey(int16(kmsg.ApiVersions)),
			APIVersion: version, ErrorCode: codeUnsupportedVersion,
		},
	}
	return c.enqueue(p)
}

// enqueue hands p to the response writer, in request order. When the
// queue is full it first flushes the forwarded requests, whose responses
// are what the writer waits for.
func (c *conn) enqueue(p *pending) error {
	select {
	case c.queue <- p:
		return nil
	default:
	}
	if err := c.flushBackend(); err != nil {
		return err
	}
	select {
	case c.queue <- p:
		return nil
	case <-c.writerDone:
		return fmt.Errorf("kafka: response writer stopped: %w", net.ErrClosed)
	}
}

// forward writes a request frame (with its size prefix) to the broker.
func (c *conn) forward(full []byte) error {
	if _, err := c.toBackend.Write(full); err != nil {
		return fmt.Errorf("kafka: forwarding a request: %w", err)
	}
	return nil
}

// forwardRequest writes a request of the inspector's own to the broker.
func (c *conn) forwardRequest(r kmsg.Request, corr int32, clientID *string) error {
	var f *kmsg.RequestFormatter
	if clientID != nil {
		f = kmsg.NewRequestFormatter(kmsg.FormatterClientID(*clientID))
	} else {
		f = kmsg.NewRequestFormatter()
	}
	if _, err := c.toBackend.Write(f.AppendRequest(nil, r, corr)); err != nil {
		return fmt.Errorf("kafka: sending a Metadata probe: %w", err)
	}
	return nil
}
