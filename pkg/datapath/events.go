package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Event is one dropped packet.
type Event struct {
	// Time is when the program dropped the packet.
	Time time.Time
	// Src and Dst are the packet's addresses and, for TCP, ports (0 when
	// the TCP header could not be read, and for other protocols).
	Src, Dst netip.AddrPort
	// SrcIndex and DstIndex are the endpoint indexes of the two addresses,
	// 0 for an address that is not enrolled.
	SrcIndex, DstIndex uint32
	// Ifindex is the interface the program ran on.
	Ifindex uint32
	// Len is the packet's length (skb->len).
	Len uint32
	// Mark is the packet's mark as the program saw it.
	Mark uint32
	// Protocol is the IP protocol (IPv6: the next header as far as parsed).
	Protocol uint8
	// TCPFlags is the TCP flags byte when a TCP header was read.
	TCPFlags  uint8
	Reason    Reason
	Direction Direction
}

// eventSize is the size of struct pal_event.
var eventSize = binary.Size(datapathPalEvent{})

func decodeEvent(raw []byte, boot time.Time) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("datapath: event of %d bytes, want %d", len(raw), eventSize)
	}
	var e datapathPalEvent
	if err := binary.Read(bytes.NewReader(raw[:eventSize]), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("datapath: decode event: %w", err)
	}
	src, dst := eventAddr(e.Family, e.Saddr), eventAddr(e.Family, e.Daddr)
	return Event{
		Time:      boot.Add(time.Duration(e.Timestamp)),
		Src:       netip.AddrPortFrom(src, e.Sport),
		Dst:       netip.AddrPortFrom(dst, e.Dport),
		SrcIndex:  e.SrcIndex,
		DstIndex:  e.DstIndex,
		Ifindex:   e.Ifindex,
		Len:       e.Len,
		Mark:      e.Mark,
		Protocol:  e.Protocol,
		TCPFlags:  e.TcpFlags,
		Reason:    Reason(e.Reason),
		Direction: Direction(e.Direction),
	}, nil
}

// eventAddr converts an event's address; an IPv4 packet whose header could
// not be read has all-zero addresses, reported as 0.0.0.0.
func eventAddr(family uint8, a datapathPalAddr) netip.Addr {
	k := palAddr(a)
	if family == 4 {
		return netip.AddrFrom4([4]byte(k[12:]))
	}
	return netip.AddrFrom16(k)
}

// EventReader reads drop events. It is not safe for concurrent use; Close
// may be called from another goroutine to stop a blocked Read.
type EventReader struct {
	rd   *ringbuf.Reader
	boot time.Time
}

// ErrClosed is returned by EventReader.Read after Close.
var ErrClosed = errors.New("datapath: event reader closed")

// Events opens a reader of the drop events. Events are consumed: with
// several readers, each event goes to one of them.
func (d *Datapath) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(d.objs.PalEvents)
	if err != nil {
		return nil, fmt.Errorf("datapath: open events: %w", err)
	}
	boot, err := bootTime()
	if err != nil {
		rd.Close()
		return nil, err
	}
	return &EventReader{rd: rd, boot: boot}, nil
}

// bootTime is the wall-clock time of CLOCK_MONOTONIC's zero, which is what
// bpf_ktime_get_ns counts from.
func bootTime() (time.Time, error) {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}, fmt.Errorf("datapath: clock_gettime: %w", err)
	}
	return now.Add(-time.Duration(ts.Nano())), nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded once t has passed
// and no event is waiting. The zero time means no deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read waits for the next event.
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		switch {
		case errors.Is(err, ringbuf.ErrClosed):
			return Event{}, ErrClosed
		case errors.Is(err, os.ErrDeadlineExceeded):
			return Event{}, err
		}
		return Event{}, fmt.Errorf("datapath: read event: %w", err)
	}
	return decodeEvent(rec.RawSample, r.boot)
}

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *EventReader) Close() error {
	if err := r.rd.Close(); err != nil {
		return fmt.Errorf("datapath: close events: %w", err)
	}
	return nil
}
