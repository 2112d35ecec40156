package kafka

//go:generate go run ./internal/gendecode -o decode_gen.go

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Why the inspector does not call kmsg's ReadFrom: kmsg's loops over
// tagged fields (flexible versions) keep counting down the tag count they
// read after the input has run out, so a request of a dozen bytes ending
// in a tag count of 2^32-1 costs tens of seconds of CPU. decode_gen.go is
// a generated copy of kmsg's decoders for every request (and for the
// responses the inspector reads) that stops at once instead; otherwise it
// is kmsg's code, decoding into kmsg's types (TestGeneratedDecodersMatchKmsg,
// TestGeneratedIsCurrent).

var (
	// errNotEnoughData is kreader's error for input that ran out.
	errNotEnoughData = errors.New("not enough data")
	// errNoDecoder reports a type decode_gen.go has no decoder for.
	errNoDecoder = errors.New("no generated decoder for this message type")
)

// wireMessage is what kmsg requests and responses share for decoding.
type wireMessage interface {
	IsFlexible() bool
	AppendTo([]byte) []byte
}

// decodeBody decodes body into m (a kmsg request, or a response
// decode_gen.go covers) at m's version.
func decodeBody(m wireMessage, body []byte) error {
	return decodeGenerated(m, body)
}

// readTags is kmsg's internalReadTags, stopping when the input runs out.
func readTags(b *kreader) kmsg.Tags {
	var t kmsg.Tags
	for num := b.Uvarint(); num > 0 && b.Ok(); num-- {
		key, size := b.Uvarint(), b.Uvarint()
		t.Set(key, b.Span(int(size)))
	}
	return t
}

// kreader has the methods and semantics of kmsg's internal kbin.Reader
// that the generated decoders use: a failed read sets bad, empties the
// input and returns a zero value, and every later read fails too.
type kreader struct {
	Src []byte
	bad bool
}

func (b *kreader) fail() {
	b.bad = true
	b.Src = nil
}

// Ok reports whether no read has failed.
func (b *kreader) Ok() bool { return !b.bad }

// Complete returns errNotEnoughData if a read failed.
func (b *kreader) Complete() error {
	if b.bad {
		return errNotEnoughData
	}
	return nil
}

// Span returns the next l bytes.
func (b *kreader) Span(l int) []byte {
	if len(b.Src) < l || l < 0 {
		b.fail()
		return nil
	}
	r := b.Src[:l:l]
	b.Src = b.Src[l:]
	return r
}

func (b *kreader) fixed(n int) []byte {
	if len(b.Src) < n {
		b.fail()
		return nil
	}
	r := b.Src[:n]
	b.Src = b.Src[n:]
	return r
}

// Bool reads a boolean (any nonzero byte is true).
func (b *kreader) Bool() bool {
	r := b.fixed(1)
	return r != nil && r[0] != 0
}

// Int8 reads an int8.
func (b *kreader) Int8() int8 {
	if r := b.fixed(1); r != nil {
		return int8(r[0])
	}
	return 0
}

// Int16 reads a big-endian int16.
func (b *kreader) Int16() int16 { return int16(b.Uint16()) }

// Uint16 reads a big-endian uint16.
func (b *kreader) Uint16() uint16 {
	if r := b.fixed(2); r != nil {
		return binary.BigEndian.Uint16(r)
	}
	return 0
}

// Int32 reads a big-endian int32.
func (b *kreader) Int32() int32 {
	if r := b.fixed(4); r != nil {
		return int32(binary.BigEndian.Uint32(r))
	}
	return 0
}

// Int64 reads a big-endian int64.
func (b *kreader) Int64() int64 {
	if r := b.fixed(8); r != nil {
		return int64(binary.BigEndian.Uint64(r))
	}
	return 0
}

// Float64 reads a big-endian IEEE 754 double.
func (b *kreader) Float64() float64 { return math.Float64frombits(uint64(b.Int64())) }

// Uuid reads 16 bytes.
func (b *kreader) Uuid() [16]byte { //nolint:revive // kbin's name, used by the generated code
	var r [16]byte
	copy(r[:], b.Span(16))
	return r
}

// Uvarint reads an unsigned varint of at most five bytes.
func (b *kreader) Uvarint() uint32 {
	v, n := uvarint(b.Src)
	if n <= 0 {
		b.fail()
		return 0
	}
	b.Src = b.Src[n:]
	return v
}

// Varint reads a zig-zag varint of at most five bytes.
func (b *kreader) Varint() int32 {
	x := b.Uvarint()
	return int32(x>>1) ^ -int32(x&1)
}

// String reads an int16-length string.
func (b *kreader) String() string { return string(b.Span(int(b.Int16()))) }

// CompactString reads a uvarint-length (plus one) string.
func (b *kreader) CompactString() string { return string(b.Span(int(b.Uvarint()) - 1)) }

// NullableString reads an int16-length string; a negative length is null.
func (b *kreader) NullableString() *string {
	l := b.Int16()
	if l < 0 {
		return nil
	}
	s := string(b.Span(int(l)))
	return &s
}

// CompactNullableString reads a compact string; length 0 is null.
func (b *kreader) CompactNullableString() *string {
	l := int(b.Uvarint()) - 1
	if l < 0 {
		return nil
	}
	s := string(b.Span(l))
	return &s
}

// Bytes reads int32-length bytes; like kmsg, -1 reads as empty, never nil.
func (b *kreader) Bytes() []byte {
	l := b.Int32()
	if l == -1 {
		return []byte{}
	}
	return b.Span(int(l))
}

// CompactBytes reads compact bytes; like kmsg, null reads as empty.
func (b *kreader) CompactBytes() []byte {
	l := int(b.Uvarint()) - 1
	if l == -1 {
		return []byte{}
	}
	return b.Span(l)
}

// NullableBytes reads int32-length bytes; a negative length is nil.
func (b *kreader) NullableBytes() []byte {
	l := b.Int32()
	if l < 0 {
		return nil
	}
	return b.Span(int(l))
}

// CompactNullableBytes reads compact bytes; length 0 is nil.
func (b *kreader) CompactNullableBytes() []byte {
	l := int(b.Uvarint()) - 1
	if l < 0 {
		return nil
	}
	return b.Span(l)
}

// VarintBytes reads varint-length bytes; a negative length is nil.
func (b *kreader) VarintBytes() []byte {
	l := b.Varint()
	if l < 0 {
		return nil
	}
	return b.Span(int(l))
}

// VarintString reads a varint-length string.
func (b *kreader) VarintString() string { return string(b.VarintBytes()) }

// ArrayLen reads an int32 array length, failing when fewer bytes than
// elements remain (every element takes at least one byte).
func (b *kreader) ArrayLen() int32 {
	r := b.Int32()
	if len(b.Src) < int(r) {
		b.fail()
		return 0
	}
	return r
}

// CompactArrayLen reads a compact array length (uvarint minus one, -1 is
// null) with ArrayLen's check.
func (b *kreader) CompactArrayLen() int32 {
	r := int32(b.Uvarint()) - 1
	if len(b.Src) < int(r) {
		b.fail()
		return 0
	}
	return r
}

// uvarint decodes a Kafka unsigned varint (at most five bytes, 32 bits)
// as kmsg does; n <= 0 means it fails.
func uvarint(in []byte) (v uint32, n int) {
	var x uint32
	for i := 0; i < 5 && i < len(in); i++ {
		c := in[i]
		if i == 4 {
			if c > 0x0f {
				return 0, -5
			}
			return x | uint32(c)<<28, 5
		}
		x |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return x, i + 1
		}
	}
	return 0, 0
}
