package kafka

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestDecodeStopsTagSpin: a tag count of 2^32-1 makes kmsg count down for
// tens of seconds; the generated decoders fail at once.
func TestDecodeStopsTagSpin(t *testing.T) {
	huge := []byte{0xff, 0xff, 0xff, 0xff, 0x0f}
	tests := []struct {
		name string
		req  kmsg.Request
		body []byte
	}{
		{"ApiVersions v3 top-level tags", &kmsg.ApiVersionsRequest{Version: 3}, append([]byte{2, 'a', 2, 'b'}, huge...)},
		{"Metadata v12 topic tags", &kmsg.MetadataRequest{Version: 12}, append([]byte{2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 2, 'a'}, huge...)},
		{"Produce v9 partition tags", &kmsg.ProduceRequest{Version: 9}, append([]byte{0, 0xff, 0xff, 0, 0, 0, 1, 2, 2, 'a', 2, 0, 0, 0, 0, 1}, huge...)},
		{"Produce v9 top-level tags", &kmsg.ProduceRequest{Version: 9}, append([]byte{0, 0xff, 0xff, 0, 0, 0, 1, 1}, huge...)},
		{"Fetch v12 known-tag loop", &kmsg.FetchRequest{Version: 12}, append(make([]byte, 21), huge...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			if err := decodeBody(tt.req, tt.body); err == nil {
				t.Fatal("decoded")
			}
			if d := time.Since(start); d > 100*time.Millisecond {
				t.Fatalf("took %v", d)
			}
		})
	}
}

// TestGeneratedDecodersMatchKmsg: for every key and version, the
// generated decoder turns a filled request into exactly what kmsg's
// ReadFrom does, and fails on every truncation where kmsg fails.
func TestGeneratedDecodersMatchKmsg(t *testing.T) {
	forEachKeyVersion(t, func(t *testing.T, key, version int16) {
		f := newFiller()
		want, body := f.filledRequest(t, key, version)
		got := kmsg.RequestForKey(key)
		got.SetVersion(version)
		if err := decodeBody(got, body); err != nil {
			t.Fatalf("generated decoder refused a valid body: %v", err)
		}
		if !bytes.Equal(got.AppendTo(nil), want.AppendTo(nil)) {
			t.Fatal("generated decode differs from kmsg's")
		}
		for _, cut := range []int{0, 1, len(body) / 3, len(body) / 2, len(body) - 1} {
			if cut < 0 || cut >= len(body) {
				continue
			}
			k := kmsg.RequestForKey(key)
			k.SetVersion(version)
			g := kmsg.RequestForKey(key)
			g.SetVersion(version)
			kerr, gerr := k.ReadFrom(body[:cut]), decodeBody(g, body[:cut])
			if (kerr == nil) != (gerr == nil) {
				t.Fatalf("truncated to %d: kmsg err %v, generated err %v", cut, kerr, gerr)
			}
			if kerr == nil && !bytes.Equal(k.AppendTo(nil), g.AppendTo(nil)) {
				t.Fatalf("truncated to %d: decodes differ", cut)
			}
		}
	})
}

// TestGeneratedResponseDecoders covers the responses the inspector reads.
func TestGeneratedResponseDecoders(t *testing.T) {
	for _, key := range []kmsg.Key{kmsg.ApiVersions, kmsg.Metadata, kmsg.CreateTopics, kmsg.DescribeTopicPartitions} {
		for v := int16(0); v <= key.Response().MaxVersion(); v++ {
			f := newFiller()
			r := key.Response()
			f.fill(reflectElem(r), "")
			r.SetVersion(v)
			body := r.AppendTo(nil)
			got := key.Response()
			got.SetVersion(v)
			if err := decodeBody(got, body); err != nil {
				t.Fatalf("%s v%d: %v", key.Name(), v, err)
			}
			want := key.Response()
			want.SetVersion(v)
			if err := want.ReadFrom(body); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.AppendTo(nil), want.AppendTo(nil)) {
				t.Fatalf("%s v%d: decodes differ", key.Name(), v)
			}
		}
	}
	if err := decodeBody(kmsg.NewPtrFetchResponse(), nil); err != errNoDecoder {
		t.Fatalf("fetch response: %v", err)
	}
}

// TestGeneratedIsCurrent: decode_gen.go is what the generator writes for
// the kmsg version in go.mod.
func TestGeneratedIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("regenerates decode_gen.go")
	}
	out := t.TempDir() + "/decode_gen.go"
	cmd := goCommand(t, "run", "./internal/gendecode", "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generator: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("decode_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("decode_gen.go is stale: run go generate ./pkg/l7/kafka")
	}
}

// TestUvarintMatchesKmsg: boundaries of the varint reader.
func TestUvarintMatchesKmsg(t *testing.T) {
	for _, tt := range []struct {
		in []byte
		v  uint32
		n  int
	}{
		{[]byte{0}, 0, 1},
		{[]byte{0x7f}, 127, 1},
		{[]byte{0x80, 0x01}, 128, 2},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, 1<<32 - 1, 5},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x10}, 0, -5},
		{[]byte{0x80, 0x80, 0x80, 0x00}, 0, 4},
		{[]byte{0x80}, 0, 0},
		{nil, 0, 0},
	} {
		v, n := uvarint(tt.in)
		if v != tt.v || n != tt.n {
			t.Errorf("uvarint(% x) = %d, %d; want %d, %d", tt.in, v, n, tt.v, tt.n)
		}
	}
}
