package handoff

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/workload"
)

// ProtocolVersion is the value of the "version" field this package speaks.
const ProtocolVersion = 1

// MaxMessageSize is the largest packet, in bytes, that either side sends or
// accepts. A workload with a few hundred labels fits comfortably.
const MaxMessageSize = 64 << 10

// msgType is the "type" field of a message.
type msgType string

const (
	typeHello        msgType = "hello"
	typeAdd          msgType = "add"
	typeDel          msgType = "del"
	typeSnapshotSent msgType = "snapshot_sent"
	typeAck          msgType = "ack"
	typeDrops        msgType = "drops"
)

// message is the wire format of every packet; see the package documentation.
type message struct {
	Version  int                `json:"version"`
	Type     msgType            `json:"type"`
	ID       uint64             `json:"id,omitempty"`
	Workload *workload.Workload `json:"workload,omitempty"`
	UID      string             `json:"uid,omitempty"`
	Error    string             `json:"error,omitempty"`
	Proxy    string             `json:"proxy,omitempty"`
	Drops    []Drop             `json:"drops,omitempty"`
	Features []string           `json:"features,omitempty"`
}

// featureDrops in a hello says that the proxy takes "drops" messages.
const featureDrops = "drops"

// errProtocol marks errors caused by what the peer sent.
var errProtocol = errors.New("protocol error")

func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}

// validate checks the fields every message of its type needs.
func (m *message) validate() error {
	if m.Version != ProtocolVersion {
		return protocolErrorf("unsupported version %d (want %d)", m.Version, ProtocolVersion)
	}
	switch m.Type {
	case typeHello:
	case typeAdd:
		if m.ID == 0 {
			return protocolErrorf("add without id")
		}
		if m.Workload == nil || m.Workload.UID == "" {
			return protocolErrorf("add without workload uid")
		}
	case typeDel:
		if m.ID == 0 {
			return protocolErrorf("del without id")
		}
		if m.UID == "" {
			return protocolErrorf("del without uid")
		}
	case typeSnapshotSent:
		if m.ID == 0 {
			return protocolErrorf("snapshot_sent without id")
		}
	case typeAck:
		if m.ID == 0 {
			return protocolErrorf("ack without id")
		}
	case typeDrops:
		if m.ID == 0 {
			return protocolErrorf("drops without id")
		}
		if len(m.Drops) == 0 {
			return protocolErrorf("drops without drops")
		}
	default:
		return protocolErrorf("unknown message type %q", m.Type)
	}
	return nil
}

// encode marshals m and checks the size limit.
func encode(m *message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type, err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("encode %s: message is %d bytes, limit %d", m.Type, len(b), MaxMessageSize)
	}
	return b, nil
}

// checkAddSize reports whether an add for w fits in one packet with any id.
func checkAddSize(w *workload.Workload) error {
	_, err := encode(&message{Version: ProtocolVersion, Type: typeAdd, ID: math.MaxUint64, Workload: w})
	return err
}

// oobSize is room for the control message of exactly one descriptor. A peer
// that attaches more gets MSG_CTRUNC, and the kernel closes the extra ones.
var oobSize = unix.CmsgSpace(4)

// packetReader reads messages from one connection, reusing its buffers.
type packetReader struct {
	c   *net.UnixConn
	buf []byte
	oob []byte
}

func newPacketReader(c *net.UnixConn) *packetReader {
	return &packetReader{c: c, buf: make([]byte, MaxMessageSize), oob: make([]byte, oobSize)}
}

// read returns the next message and the descriptors that came with it; the
// caller owns those files. On error no files are returned (any received are
// closed). Errors caused by the peer's data wrap errProtocol; io.EOF means the
// peer closed the connection.
func (r *packetReader) read() (*message, []*os.File, error) {
	n, oobn, flags, _, err := r.c.ReadMsgUnix(r.buf, r.oob)
	if err != nil {
		return nil, nil, err
	}
	files, ferr := parseRights(r.oob[:oobn])
	if ferr != nil {
		closeFiles(files)
		return nil, nil, ferr
	}
	if flags&unix.MSG_TRUNC != 0 {
		closeFiles(files)
		return nil, nil, protocolErrorf("packet larger than %d bytes", MaxMessageSize)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFiles(files)
		return nil, nil, protocolErrorf("too many file descriptors in one packet")
	}
	var m message
	if err := json.Unmarshal(r.buf[:n], &m); err != nil {
		closeFiles(files)
		return nil, nil, protocolErrorf("decode %d-byte packet: %v", n, err)
	}
	if err := m.validate(); err != nil {
		closeFiles(files)
		return nil, nil, err
	}
	return &m, files, nil
}

// parseRights extracts SCM_RIGHTS descriptors as files (close-on-exec is set
// by the Go runtime's recvmsg). Non-rights control messages are an error.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, protocolErrorf("parse control message: %v", err)
	}
	var files []*os.File
	for i := range cmsgs {
		fds, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			closeFiles(files)
			return nil, protocolErrorf("unexpected control message: %v", err)
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "netns"))
		}
	}
	return files, nil
}

// writePacket sends m, with f's descriptor attached when f is not nil.
func writePacket(c *net.UnixConn, m *message, f *os.File) error {
	b, err := encode(m)
	if err != nil {
		return err
	}
	if f == nil {
		if _, _, err := c.WriteMsgUnix(b, nil, nil); err != nil {
			return fmt.Errorf("send %s: %w", m.Type, err)
		}
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	var werr error
	cerr := rc.Control(func(fd uintptr) {
		_, _, werr = c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	})
	if cerr != nil {
		return fmt.Errorf("send %s: access fd: %w", m.Type, cerr)
	}
	if werr != nil {
		return fmt.Errorf("send %s: %w", m.Type, werr)
	}
	return nil
}

// dupFile duplicates f's descriptor (close-on-exec) into a new file.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), derr)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
