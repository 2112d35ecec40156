package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Frame limits.
const (
	// maxRequestSize bounds one request frame; it is Kafka's default
	// socket.request.max.bytes (100 MiB).
	maxRequestSize = 100 << 20
	// minRequestSize is the smallest request header: api key, version
	// and correlation id.
	minRequestSize = 8
	// maxDecodedResponseSize bounds a response the inspector decodes
	// (ApiVersions, Metadata, CreateTopics, DescribeTopicPartitions);
	// larger ones are relayed without learning from them.
	maxDecodedResponseSize = 100 << 20
)

var (
	// ErrMalformed reports a client byte stream that is not a Kafka
	// request the inspector can decode. The connection is closed.
	ErrMalformed = errors.New("malformed kafka request")
	// ErrUnsupported reports a request the inspector cannot judge or
	// answer: an api key or version kmsg does not know, or a switch to
	// raw SASL frames. The connection is closed.
	ErrUnsupported = errors.New("unsupported kafka request")
	// ErrBackend reports a broker byte stream that breaks the protocol:
	// a response nobody asked for, a correlation id out of order or a
	// truncated frame. The connection is closed.
	ErrBackend = errors.New("kafka broker protocol violation")
)

// requestHeader is the parsed header of one request.
type requestHeader struct {
	key, version int16
	corr         int32
	clientID     *string
}

// headerPrefix reads the fixed part every request header starts with.
// frame is the request without its size prefix.
func headerPrefix(frame []byte) (key, version int16, corr int32) {
	return int16(binary.BigEndian.Uint16(frame)), int16(binary.BigEndian.Uint16(frame[2:])),
		int32(binary.BigEndian.Uint32(frame[4:]))
}

// decodeRequest parses the header and body of frame into req, whose key
// is the frame's and whose version is already set. It returns the header.
func decodeRequest(frame []byte, req kmsg.Request) (requestHeader, error) {
	key, version, corr := headerPrefix(frame)
	h := requestHeader{key: key, version: version, corr: corr}
	r := kreader{Src: frame[minRequestSize:]}
	// ControlledShutdown v0 uses request header v0: no client id.
	if key != int16(kmsg.ControlledShutdown) || version != 0 {
		h.clientID = r.NullableString()
	}
	if req.IsFlexible() {
		readTags(&r) // header tags: none are defined
	}
	if !r.Ok() {
		return h, fmt.Errorf("%w: %s v%d: truncated request header", ErrMalformed, kmsg.NameForKey(key), version)
	}
	if err := decodeBody(req, r.Src); err != nil {
		return h, fmt.Errorf("%w: %s v%d: %w", ErrMalformed, kmsg.NameForKey(key), version, err)
	}
	return h, nil
}

// readFrame reads one size-prefixed frame into buf (grown as needed) and
// returns it with its size prefix. io.EOF means the stream ended cleanly
// between frames.
func readFrame(r io.Reader, buf []byte, minSize, maxSize int) ([]byte, error) {
	if cap(buf) < 4 {
		buf = make([]byte, 4, 4096)
	}
	buf = buf[:4]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: stream ended inside a size prefix", ErrMalformed)
		}
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(buf)))
	if n < minSize || n > maxSize {
		return nil, fmt.Errorf("%w: frame size %d outside [%d, %d]", ErrMalformed, n, minSize, maxSize)
	}
	if cap(buf) < 4+n {
		nb := make([]byte, 4+n)
		copy(nb, buf[:4])
		buf = nb
	}
	buf = buf[:4+n]
	if _, err := io.ReadFull(r, buf[4:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: stream ended inside a %d-byte frame", ErrMalformed, n)
		}
		return nil, err
	}
	return buf, nil
}

// responseHeaderFlexible reports whether the response to a request of
// this key at this flexibility has header v1 (tagged fields). ApiVersions
// responses always use header v0 so that any client can read them.
func responseHeaderFlexible(key int16, flexible bool) bool {
	return flexible && key != int16(kmsg.ApiVersions)
}

// appendResponse appends a complete response frame (size, correlation id,
// header tags where the header is flexible, body) to dst.
func appendResponse(dst []byte, corr int32, resp kmsg.Response) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(corr))
	if responseHeaderFlexible(resp.Key(), resp.IsFlexible()) {
		dst = append(dst, 0) // no tagged fields
	}
	dst = resp.AppendTo(dst)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// responseBody returns the body of a complete response frame (without
// its size prefix) whose header is flexible as given.
func responseBody(frame []byte, flexibleHeader bool) ([]byte, bool) {
	r := kreader{Src: frame}
	r.Int32() // correlation id
	if flexibleHeader {
		readTags(&r)
	}
	return r.Src, r.Ok()
}
